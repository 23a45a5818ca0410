"""The process's random number generators (Python ``random``, NumPy's global ``np.random``,
PyTorch's CPU and CUDA generators) as one state that can be saved in a checkpoint and restored,
kept unchanged around a piece of code, or seeded for one piece of code only."""

from __future__ import annotations

import contextlib
import random
from typing import Any, Dict, Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "derived_seed",
    "get_rng_state",
    "preserved_rng",
    "seed_everything",
    "seeded_rng",
    "set_rng_state",
]


def get_rng_state(cuda: bool = True) -> Dict[str, Any]:
    """The states of ``random``, ``np.random`` and torch's CPU generator, and (``cuda`` and CUDA
    initialised) of every CUDA device's generator: tensors, numbers, strings and tuples only,
    so that ``torch.load(..., weights_only=True)`` (Detectron2's checkpoint loading) reads them."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = _raw_state(cuda)
    state["numpy"] = {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }
    return state


def _raw_state(cuda: bool) -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (the CUDA states only where CUDA is there and
    has as many devices as when they were saved)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["name"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``np.random`` (``seed`` mod 2**32) and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the body without changing the generators: whatever it draws, they are as before after
    it (CPU and, where initialised, CUDA)."""
    state = _raw_state(cuda=True)
    try:
        yield
    finally:
        set_rng_state(state)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the body with ``random``, ``np.random`` and torch's CPU generator seeded with ``seed``
    (``0 <= seed < 2**32``), and restore their states after it. CUDA is not touched (this is also
    safe in a forked DataLoader worker, where CUDA must not be initialised)."""
    state = _raw_state(cuda=False)
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        set_rng_state(state)


def derived_seed(*keys: int) -> int:
    """A 32-bit seed that is a fixed function of the integers ``keys`` (NumPy's ``SeedSequence``:
    nearby keys give unrelated seeds)."""
    values: Sequence[int] = [int(k) for k in keys]
    return int(np.random.SeedSequence(values).generate_state(1, dtype=np.uint32)[0])
