"""Pathfinder checkpoints written before the random-generator states became tensors.

Such a checkpoint holds NumPy's raw RNG state (``np.random.get_state()``: a tuple with a NumPy
``uint32`` array) under ``rng.numpy``, which :func:`crbp_d2.utils.safe_load.load_torch_file`
(``torch.load(weights_only=True)``) refuses, as it refuses any object it would have to build by
running Python code. :func:`migrate_checkpoint_file` reads such a file the old way (unpickling
runs whatever the file names, so only for a file you wrote yourself: ``trust=True`` is
required), converts the NumPy values to the current form (the RNG state as
:func:`crbp_d2.utils.rng.get_rng_state` writes it, other arrays as tensors, NumPy scalars as
Python numbers) and writes the new file atomically, checking that the safe loader reads it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..utils.io import atomic_torch_save
from ..utils.safe_load import CheckpointReadError, load_torch_file

__all__ = ["MigrationError", "convert_old_state", "migrate_checkpoint_file"]


class MigrationError(ValueError):
    """A checkpoint that cannot be migrated, or a refused request (message: one line)."""


def _numpy_rng_state(value: Any) -> Any:
    """``np.random.get_state()``'s tuple as :func:`crbp_d2.utils.rng.get_rng_state` stores it."""
    name, keys, pos, has_gauss, cached_gaussian = value
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _plain(value: Any) -> Any:
    """``value`` with NumPy arrays as tensors and NumPy scalars as Python numbers (recursively
    through dicts, lists and tuples)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _is_raw_numpy_state(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 5
        and isinstance(value[0], str)
        and isinstance(value[1], np.ndarray)
    )


def convert_old_state(state: Any) -> Any:
    """A Pathfinder checkpoint dict in the current form: ``rng.numpy`` (a raw
    ``np.random.get_state()`` tuple) as a dict of tensors and numbers, any other NumPy value as
    a tensor / Python number. Raises :class:`MigrationError` if ``state`` is not a Pathfinder
    checkpoint (no ``model`` dict)."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise MigrationError("not a Pathfinder trainer checkpoint (no 'model' dict of weights)")
    state = dict(state)
    rng = state.get("rng")
    if isinstance(rng, dict) and _is_raw_numpy_state(rng.get("numpy")):
        rng = dict(rng)
        rng["numpy"] = _numpy_rng_state(rng["numpy"])
        state["rng"] = rng
    return _plain(state)


def migrate_checkpoint_file(
    old: str, new: str, *, trust: bool = False, overwrite: bool = False
) -> str:
    """Convert the Pathfinder checkpoint ``old`` (read with ``weights_only=False``: only with
    ``trust``) into ``new`` (written atomically; an existing ``new``, or ``new`` == ``old``,
    only with ``overwrite``); returns what was done, in one line. The new file is read back
    with the safe loader before it replaces anything."""
    old, new = os.fspath(old), os.fspath(new)
    if not trust:
        raise MigrationError(
            f"{old}: migrating reads the old file with torch.load(weights_only=False), which runs "
            "any code a crafted file holds; pass --trust only for a checkpoint you wrote yourself"
        )
    if not os.path.isfile(old):
        raise MigrationError(f"checkpoint not found: {old}")
    same = os.path.exists(new) and os.path.samefile(old, new)
    if (same or os.path.exists(new)) and not overwrite:
        what = "is the input file" if same else "exists"
        raise MigrationError(
            f"{new} {what}: pass --overwrite to replace it (the old file is otherwise kept)"
        )
    if os.path.isdir(new):
        raise MigrationError(f"{new} is a folder, not a file")
    try:
        state = torch.load(old, map_location="cpu", weights_only=False)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:
        detail = " ".join(str(error).split())[:120]
        raise MigrationError(
            f"cannot read {old}: {type(error).__name__}: {detail or 'no detail'}"
        ) from None
    try:
        converted = convert_old_state(state)
    except MigrationError as error:
        raise MigrationError(f"{old}: {error}") from None
    tmp = os.path.join(os.path.dirname(os.path.abspath(new)), f".{os.path.basename(new)}.check")
    try:
        atomic_torch_save(converted, tmp)
        try:
            load_torch_file(tmp)  # what the trainers will read
        except CheckpointReadError as error:
            raise MigrationError(
                f"{old}: the converted checkpoint still holds objects the safe loader refuses "
                f"({error})"
            ) from None
        os.replace(tmp, new)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return f"wrote {new} (from {old}; the RNG state as tensors, readable with weights_only=True)"
