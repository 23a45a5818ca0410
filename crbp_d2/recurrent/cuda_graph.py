"""The fixed-N steps without a graph, captured once in a CUDA graph and replayed.

A CUDA graph needs static shapes and a fixed number of steps, so this path is taken only for
plain iteration without a tolerance (``solver="iterate"``, ``solver_tol=None``) on a CUDA
drive. A batch whose size changes from call to call (Detectron2's RoI count) is padded with zero
RoIs up to a bucket size (:func:`bucket_size`), one graph per bucket, when the cell is
batch-independent (``cell.batch_independent``: GroupNorm / InstanceNorm / no norm); cells with
batch statistics (the Pathfinder hGRU's BatchNorm) are captured at their exact batch size.

The graph holds the addresses of the cell's parameters, so in-place optimizer updates are seen by
the next replay; replacing a parameter tensor (``load_state_dict`` with ``assign=True``) needs
:meth:`GraphedSteps.reset`.
"""

from __future__ import annotations

import logging
import weakref
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import State, state_like, state_parts

__all__ = ["DEFAULT_BUCKETS", "GraphedSteps", "bucket_size", "graphed_steps", "pad_batch"]

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS: Tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)


def bucket_size(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket >= ``n``; beyond the largest bucket, the next multiple of it.

    >>> bucket_size(5), bucket_size(64), bucket_size(65), bucket_size(600)
    (8, 64, 128, 1024)
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"the batch size must be an integer >= 0, got {n!r}")
    if not buckets or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise ValueError(f"buckets must be increasing integers >= 1, got {tuple(buckets)}")
    for b in buckets:
        if n <= b:
            return b
    top = buckets[-1]
    return -(-n // top) * top


def pad_batch(tensor: Tensor, size: int) -> Tensor:
    """(B, ...) -> (size, ...) with zero rows appended (``size`` >= B)."""
    if size < tensor.shape[0]:
        raise ValueError(f"cannot pad a batch of {tensor.shape[0]} down to {size}")
    if size == tensor.shape[0]:
        return tensor
    pad = tensor.new_zeros((size - tensor.shape[0],) + tuple(tensor.shape[1:]))
    return torch.cat([tensor, pad])


class _Captured:
    """One CUDA graph of ``steps`` cell evaluations at one input shape."""

    def __init__(self, cell: nn.Module, drive: Tensor, state: State, steps: int) -> None:
        self.drive = drive.clone()
        self.state = state_like([p.clone() for p in state_parts(state)], state)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():  # warm-up outside the capture
            for _ in range(2):
                out = self.state
                for _ in range(steps):
                    out = cell(self.drive, out)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            out = self.state
            for _ in range(steps):
                out = cell(self.drive, out)
        self.out = out

    def run(self, drive: Tensor, state: State) -> State:
        self.drive.copy_(drive)
        for static, part in zip(state_parts(self.state), state_parts(state)):
            static.copy_(part)
        self.graph.replay()
        return self.out


class GraphedSteps:
    """``steps`` evaluations of ``cell`` without a graph, replayed from CUDA graphs.

    Args:
        cell: the recurrent cell.
        buckets: batch sizes that batch-independent cells are padded up to.
    """

    def __init__(self, cell: nn.Module, buckets: Sequence[int] = DEFAULT_BUCKETS) -> None:
        self._cell = weakref.ref(cell)
        self.buckets = tuple(buckets)
        bucket_size(1, self.buckets)  # validate
        self._graphs: Dict[tuple, _Captured] = {}
        self.captures = 0
        self.replays = 0

    def reset(self) -> None:
        """Forget every captured graph (after the cell's tensors were replaced)."""
        self._graphs.clear()

    def __call__(self, drive: Tensor, state: State, steps: int) -> State:
        """The state after ``steps`` evaluations from ``state``; a new tensor, batch unpadded."""
        cell = self._cell()
        if cell is None:
            raise RuntimeError("the cell of these graphed steps no longer exists")
        if drive.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA drive, got one on {drive.device}")
        n = drive.shape[0]
        size = bucket_size(n, self.buckets) if getattr(cell, "batch_independent", False) else n
        parts = state_parts(state)
        key = (
            steps,
            size,
            tuple(drive.shape[1:]),
            tuple(tuple(p.shape[1:]) for p in parts),
            drive.dtype,
            drive.device,
            cell.training,
        )
        padded_drive = pad_batch(drive, size)
        padded_state = state_like([pad_batch(p, size) for p in parts], state)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = _Captured(cell, padded_drive, padded_state, steps)
            self.captures += 1
        out = captured.run(padded_drive, padded_state)
        self.replays += 1
        return state_like([p[:n].clone() for p in state_parts(out)], state)


_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, GraphedSteps]" = weakref.WeakKeyDictionary()


def graphed_steps(cell: nn.Module) -> GraphedSteps:
    """The :class:`GraphedSteps` of ``cell``, made once per cell and kept outside the module."""
    steps: Optional[GraphedSteps] = _GRAPHS.get(cell)
    if steps is None:
        steps = _GRAPHS[cell] = GraphedSteps(cell)
    return steps
