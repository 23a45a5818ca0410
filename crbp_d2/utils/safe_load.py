"""Checkpoints are read as data, never as code.

A ``.pth`` file is a pickle, and unpickling can call any Python function the file names (a
crafted checkpoint runs its code on load). Every checkpoint a user gives the project (Detectron2
``MODEL.WEIGHTS`` / ``train.init_checkpoint``, the Pathfinder ``--weights`` / ``--resume-from`` /
analysis ``--checkpoints``) is read here:

- :func:`load_torch_file`: ``torch.load(..., weights_only=True)`` (tensors, numbers, strings and
  plain containers only; ``weights_only`` exists since torch 1.13). The project's own checkpoints
  hold nothing else (the random-generator states are tensors: :mod:`crbp_d2.utils.rng`).
- :func:`load_pickle_weights`: a Detectron2 / Caffe2 model-zoo ``.pkl`` (a pickled dict of NumPy
  arrays) through an unpickler that resolves only NumPy's array reconstruction and plain
  containers.

Anything else (a file that names another Python function, an empty, truncated, text or random
file) is a :class:`CheckpointReadError`: one line naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Optional

import torch

__all__ = ["CheckpointReadError", "load_pickle_weights", "load_torch_file"]


class CheckpointReadError(ValueError):
    """A checkpoint file that is missing, unreadable or refused (message: one line)."""


# What a NumPy array (and its dtype) needs to be rebuilt from a pickle, and nothing that runs code.
_PICKLE_ALLOWED = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
}
_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


# What a file that names a NumPy object most likely is, and the tool that converts it.
MIGRATION_HINT = (
    "if it is a Pathfinder checkpoint written before the RNG state was stored as tensors (it "
    "holds a NumPy RNG state), convert it once with tools/migrate_pathfinder_checkpoint.py "
    "OLD.pth NEW.pth --trust (only for a file you wrote yourself)"
)


def _refused(path: str, name: Optional[str]) -> CheckpointReadError:
    what = f"the Python object {name}" if name else "Python objects other than tensors"
    remedy = (
        MIGRATION_HINT
        if name and name.split(".")[0] == "numpy"
        else "re-save its weights with torch.save(model.state_dict(), path) from code you trust"
    )
    return CheckpointReadError(
        f"refused checkpoint {path}: it asks to run {what} when loaded (a checkpoint is read as "
        f"data only: tensors, numbers, strings and plain containers); {remedy}"
    )


def _unreadable(
    path: str, error: BaseException, kind: str = "a PyTorch checkpoint"
) -> CheckpointReadError:
    detail = " ".join(str(error).split())[:120]
    if "Weights only load failed" in detail:
        detail = "the data is not a pickle"
    if os.path.getsize(path) == 0:
        detail = "the file is empty"
    return CheckpointReadError(
        f"cannot read checkpoint {path}: not {kind} (truncated, empty or another "
        f"kind of file; {type(error).__name__}: {detail or 'no detail'})"
    )


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise CheckpointReadError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointReadError(f"checkpoint {path} is not a file")


def load_torch_file(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)``; a refused or unreadable file is a
    one-line :class:`CheckpointReadError` naming it."""
    path = os.fspath(path)
    _check_exists(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        found = _GLOBAL.search(text)
        if found:  # the file names a Python object that weights_only does not build
            raise _refused(path, found.group(1)) from None
        raise _unreadable(path, error) from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # EOFError, RuntimeError (zip), KeyError (text), ...
        raise _unreadable(path, error) from None


class _WeightsUnpickler(pickle.Unpickler):
    refused: Optional[str] = None

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        if module.split(".")[0] == "numpy" and name.endswith("DType"):  # numpy.dtypes.*
            return super().find_class(module, name)
        self.refused = f"{module}.{name}"
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def load_pickle_weights(path: str) -> Any:
    """A model-zoo ``.pkl`` (pickled dict of NumPy arrays, ``latin1`` strings) read with an
    unpickler that builds NumPy arrays and plain containers only; anything else is a one-line
    :class:`CheckpointReadError` naming the file (and the refused object)."""
    path = os.fspath(path)
    _check_exists(path)
    with open(path, "rb") as stream:
        unpickler = _WeightsUnpickler(stream, encoding="latin1")
        try:
            return unpickler.load()
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as error:
            if unpickler.refused:
                raise _refused(path, unpickler.refused) from None
            raise _unreadable(path, error, "a pickled dict of NumPy arrays") from None
