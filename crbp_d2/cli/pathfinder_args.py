"""Command-line arguments shared by the Pathfinder analysis commands."""

from __future__ import annotations

import argparse
import os
from typing import Dict, Sequence

from crbp_d2.utils.counts import count


def analysis_argument_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every multi-model analysis command shares: --checkpoints NAME=PATH ...,
    --out STEM, --batch-size, --device and --threads (call :func:`apply_threads` after parsing)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--checkpoints", nargs="+", required=True, help="NAME=PATH (trainer checkpoints)"
    )
    parser.add_argument("--out", required=True, help="output stem (no extension)")
    parser.add_argument("--batch-size", type=count(1), default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=count(0), default=0, help="torch threads (0: default)")
    return parser


def apply_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` unless ``threads`` is 0."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def parse_named_paths(items: Sequence[str]) -> Dict[str, str]:
    """``["bptt=out/a/best.pth", ...]`` -> {"bptt": "out/a/best.pth"}; a bare path is named by
    its folder (``out/run/best.pth`` -> "run"). Raises ValueError for a name given twice."""
    named: Dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = os.path.basename(os.path.dirname(item)) or item, item
        if name in named:
            raise ValueError(f"model name {name!r} given twice")
        named[name] = path
    return named
