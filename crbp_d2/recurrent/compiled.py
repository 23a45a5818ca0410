"""A compiled cell step for the cheap parts of C-RBP: the steps without a graph and the Neumann
vector-Jacobian products (regional compilation: one cell step, never the unrolled loop).

What stays eager, and why: the tracked step is double-differentiated by the LCP, and
``aot_autograd`` has no double backward (pytorch/pytorch#91469); compiling the whole N-step loop
makes compile time grow with N (pytorch/pytorch#154652). So :class:`CompiledStep` compiles
``F(drive, h)`` as a function of the cell's tensors, called with *detached* parameters: the
compiled backward then computes the gradient of the state only (J^T v), not the parameters'.

Shapes are static (``dynamic=False``: with dynamic shapes, torch 2.14's CPU backend gave wrong
gradients once a second cell was compiled in the same process); batches of a batch-independent
cell (``cell.batch_independent``) are padded to bucket sizes, so a changing RoI count compiles
once per bucket.

Where ``torch.compile`` is missing or fails (no C++ compiler for the CPU backend, an operator
Dynamo cannot trace, ...), the step runs eager and the reason is logged once (``failure``).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .base import State, state_like, state_parts
from .cuda_graph import bucket_size, pad_batch

__all__ = ["CompiledStep", "compiled_step"]

logger = logging.getLogger(__name__)


class CompiledStep:
    """``step(drive, state) -> state``: the cell's forward through ``torch.compile``, with the
    cell's parameters detached (gradients reach the state only).

    Args:
        cell: the recurrent cell (``cell(drive, state) -> state``).
        compiler: the function that compiles (default ``torch.compile``; tests pass a failing
            one to check the fallback).
    """

    def __init__(self, cell: nn.Module, compiler: Optional[Callable] = None) -> None:
        self._cell = weakref.ref(cell)  # held weakly: see compiled_step
        self._compiler = compiler if compiler is not None else getattr(torch, "compile", None)
        self._compiled: Optional[Callable] = None
        self.failure: Optional[str] = None  # why the step runs eager (None: compiled)
        self.calls = 0  # calls that went through the compiled function

    @property
    def cell(self) -> nn.Module:
        cell = self._cell()
        if cell is None:
            raise RuntimeError("the cell of this compiled step no longer exists")
        return cell

    def _tensors(self) -> Dict[str, Tensor]:
        tensors = {name: p.detach() for name, p in self.cell.named_parameters()}
        tensors.update(dict(self.cell.named_buffers()))
        return tensors

    def _eager(self, tensors: Dict[str, Tensor], drive: Tensor, state: State) -> State:
        return _functional_step(self.cell, tensors, drive, state)

    def _fail(self, why: str) -> None:
        self.failure = why
        logger.warning("compile_cell: the cell step runs eager: %s", why)

    def __call__(self, drive: Tensor, state: State) -> State:
        tensors = self._tensors()
        if self.failure is None and self._compiled is None:
            if self._compiler is None:
                self._fail("this torch has no torch.compile")
            else:
                try:
                    self._compiled = self._compiler(_functional_step, dynamic=False)
                except Exception as err:  # noqa: BLE001 - any compiler failure means eager
                    self._fail(f"torch.compile raised {type(err).__name__}: {err}")
        if self.failure is None:
            n = drive.shape[0]
            size = bucket_size(n) if getattr(self.cell, "batch_independent", False) else n
            if size != n:  # one compiled graph per bucket, not per RoI count (static shapes)
                padded = pad_batch(drive, size), [pad_batch(p, size) for p in state_parts(state)]
                out = self(padded[0], state_like(padded[1], state))
                return state_like([p[:n] for p in state_parts(out)], out)
            try:
                # the Neumann VJPs run backward K times through one graph (retain_graph), which
                # aot_autograd's donated buffers forbid; the flag is read when compiling
                with no_donated_buffers():
                    out = self._compiled(self.cell, tensors, drive, state)
                self.calls += 1
                return out
            except Exception as err:  # noqa: BLE001 - a backend failure shows at the first call
                self._fail(f"the compiled step raised {type(err).__name__}: {str(err)[:300]}")
        return self._eager(tensors, drive, state)


def _functional_step(
    cell: nn.Module, tensors: Dict[str, Tensor], drive: Tensor, state: State
) -> State:
    """The compiled function: the cell is an argument, so that Dynamo guards on it (one compiled
    graph per cell; a bound method or a weak reference was not told apart between cells)."""
    return functional_call(cell, tensors, (drive, state))


def no_donated_buffers():
    """A context without aot_autograd's donated buffers (which forbid ``retain_graph``)."""
    try:
        from torch._functorch import config as functorch_config

        return functorch_config.patch(donated_buffer=False)
    except (ImportError, AttributeError, RuntimeError):  # older torch: no such flag
        return contextlib.nullcontext()


_STEPS: "weakref.WeakKeyDictionary[nn.Module, CompiledStep]" = weakref.WeakKeyDictionary()


def compiled_step(cell: nn.Module) -> CompiledStep:
    """The :class:`CompiledStep` of ``cell``, made once per cell and kept outside the module (so
    that copying, pickling or saving the model never meets a compiled function)."""
    step = _STEPS.get(cell)
    if step is None:
        step = _STEPS[cell] = CompiledStep(cell)
    return step
