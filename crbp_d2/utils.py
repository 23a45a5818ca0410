"""Small helpers shared by the benchmark and protocol scripts (no Detectron2 import)."""

from __future__ import annotations

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
