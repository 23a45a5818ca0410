"""The machine a result was measured on, as benchmarks report it."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Optional


def parse_lscpu_model(lscpu_output: str) -> Optional[str]:
    """The value of the ``Model name:`` line of ``lscpu`` output, or None if there is none."""
    for line in lscpu_output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip() or None
    return None


def cpu_model_name() -> str:
    """The CPU model as ``lscpu`` names it (e.g. ``Intel(R) Xeon(R) Processor``).

    Falls back to ``platform.processor()`` (often just the architecture) when ``lscpu`` is
    missing, and to ``"unknown CPU"`` when that is empty too.
    """
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    return parse_lscpu_model(out) or platform.processor() or "unknown CPU"


def cpu_description() -> str:
    """E.g. ``Intel(R) Xeon(R) Processor (2 cores)``."""
    return f"{cpu_model_name()} ({os.cpu_count()} cores)"


def device_description(device: "str | object" = "cpu") -> str:
    """The CUDA card's name for a CUDA device, else :func:`cpu_description`."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_description()


def machine_record(device: "str | object" = "cpu") -> dict:
    """The machine a result came from, as every result record stores it: ``device`` (the CPU
    model and cores, or the GPU), ``cpu`` (model name), ``cores``, ``torch``, ``python`` and
    ``threads`` (torch's intra-op threads)."""
    import torch

    return {
        "device": device_description(device),
        "cpu": cpu_model_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def grad_scaler(enabled: bool):
    """A CUDA ``GradScaler`` (a no-op pass-through when not ``enabled``) on every torch >= 2.1:
    ``torch.amp.GradScaler("cuda")`` from torch 2.3, ``torch.cuda.amp.GradScaler`` before (it is
    deprecated, with a warning, from 2.4)."""
    import torch

    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch 2.1 / 2.2
