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


SHARED_MACHINE_ENV = "CRBP_SHARED_MACHINE"  # "1": other work ran beside the measurement; "0": not
PROVENANCE_FIELDS = ("device", "torch", "threads", "git_commit", "shared_machine")


def git_commit() -> Optional[str]:
    """The commit of the checkout this package runs from (``+dirty`` when it has uncommitted
    changes to tracked files), or None outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def shared_machine() -> bool:
    """Whether other work shared the machine: ``CRBP_SHARED_MACHINE`` (1 / 0) when set, else
    True when the 1-minute load average was at least half the cores when asked."""
    flag = os.environ.get(SHARED_MACHINE_ENV)
    if flag is not None:
        return flag.strip().lower() in ("1", "true", "yes")
    return os.getloadavg()[0] >= 0.5 * (os.cpu_count() or 1)


def machine_record(device: "str | object" = "cpu") -> dict:
    """What to store beside every result (the fields :data:`PROVENANCE_FIELDS`): the device (the
    CPU model and cores, or the GPU), ``cpu`` (the model name), ``cores``, the torch and Python
    versions, torch threads, the git commit of the code, whether the machine was shared (timings
    from a shared machine are not clean numbers), and the load average then."""
    import torch

    return {
        "device": device_description(device),
        "cpu": cpu_model_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "shared_machine": shared_machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def grad_scaler(enabled: bool):
    """A CUDA ``GradScaler`` (a no-op pass-through when not ``enabled``) on every torch >= 2.1:
    ``torch.amp.GradScaler("cuda")`` from torch 2.3, ``torch.cuda.amp.GradScaler`` before (it is
    deprecated, with a warning, from 2.4)."""
    import torch

    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch 2.1 / 2.2
