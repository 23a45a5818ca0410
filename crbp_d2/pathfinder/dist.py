"""Where a Pathfinder run computes: the device, the process group under ``torchrun``, and
autocast on CUDA."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch
import torch.distributed as dist
from torch import nn


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:local_rank when available, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"DEVICE {name!r} asked for but CUDA is not available (torch {torch.__version__}, "
            f"{'no CUDA build' if torch.version.cuda is None else 'no GPU visible'}); use "
            "DEVICE cpu or auto"
        )
    return device


@dataclass
class DistInfo:
    """This process's place in the process group (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(backend: Optional[str] = None) -> DistInfo:
    """Join the process group set up by ``torchrun`` (env ``WORLD_SIZE`` > 1); else single.
    The backend defaults to NCCL with CUDA, gloo without."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistInfo(rank, world, local_rank)


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """Autocast to ``dtype`` on a CUDA device; a no-op elsewhere or with ``dtype`` None."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if hasattr(model, "module") else model
