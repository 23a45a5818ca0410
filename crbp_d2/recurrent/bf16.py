"""bfloat16 autocast for the cheap parts of C-RBP on CPUs with native bfloat16.

With ``autocast_bf16`` the engine runs the steps without a graph and the Neumann VJPs through
:func:`bf16_step`: the cell step under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the
convolutions in bfloat16), its state cast back to the input state's dtype, so that the state
between steps, the forward solver's arithmetic and the Neumann sum stay float32. The tracked step
and the LCP (double backward) run eager in float32.

Native bfloat16 means the ``avx512_bf16`` or ``amx_bf16`` CPU flags (read from ``/proc/cpuinfo``;
where that file is missing, none): without them oneDNN emulates bfloat16, which is slower than
float32, so the engine runs float32 and logs why, once.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import Tensor

from .base import State, state_like, state_parts

__all__ = ["bf16_step", "cpu_has_native_bf16", "why_no_bf16"]

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has native bfloat16 instructions (``avx512_bf16`` or ``amx_bf16``)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def why_no_bf16(drive: Tensor) -> Optional[str]:
    """Why bfloat16 autocast does not run for ``drive`` (None: it runs)."""
    if drive.device.type != "cpu":
        return f"the drive is on {drive.device.type}, not the CPU"
    if not cpu_has_native_bf16():
        return "this CPU has no native bfloat16 (" + " / ".join(NATIVE_BF16_FLAGS) + ")"
    return None


def bf16_step(step: Callable[[Tensor, State], State]) -> Callable[[Tensor, State], State]:
    """``step`` under CPU bfloat16 autocast; each state part comes back in the dtype of the
    corresponding part of the state it was given (B, C, H, W tensors, or tuples of them)."""

    def run(drive: Tensor, state: State) -> State:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = step(drive, state)
        dtypes = [p.dtype for p in state_parts(state)]
        return state_like([p.to(d) for p, d in zip(state_parts(out), dtypes)], out)

    return run
