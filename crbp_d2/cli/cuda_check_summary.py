"""summary.md of a ``tools/cuda_check.sh`` run: the machine and every part's table.

    python tools/cuda_check_summary.py OUT_DIR

Reads OUT_DIR/env.json and the tables the parts wrote beside their JSON (memory_cuda.md,
rfpn_cuda.md, pathfinder_cuda.md, resume_cuda.md, speed_cuda.md); a part without its table is
listed as missing (it failed or was stopped by its timeout: its JSON, if any, holds what it
measured). Writes OUT_DIR/summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from ..utils import atomic_write_text

PARTS = (
    ("memory_cuda", "Pathfinder hGRU core: one training step, BPTT vs C-RBP"),
    ("rfpn_cuda", "R-FPN (Detectron2): BPTT-N vs C-RBP-N, and AMP training"),
    ("pathfinder_cuda", "Pathfinder PF14: peak memory per method, and a short training"),
    ("resume_cuda", "Detectron2 resume: uninterrupted vs resumed runs"),
    ("speed_cuda", "hGRU core step: eager vs CUDA graph vs compiled cell vs cheap settings"),
)


def summary(out_dir: str) -> str:
    """The Markdown text of OUT_DIR's summary."""
    lines = ["# GPU check", ""]
    env_path = os.path.join(out_dir, "env.json")
    if os.path.isfile(env_path):
        with open(env_path) as f:
            env = json.load(f)
        mode = "CPU smoke test (tiny sizes)" if env.get("mode") == "smoke" else "GPU run"
        lines += [
            f"{mode}: {env.get('device')}, torch {env.get('torch')} (CUDA "
            f"{env.get('torch_cuda')}), Python {env.get('python')}.",
            "",
        ]
    for stem, title in PARTS:
        lines += [f"## {title}", ""]
        table = os.path.join(out_dir, stem + ".md")
        if os.path.isfile(table):
            with open(table) as f:
                lines += [f.read().strip(), ""]
        else:
            found = os.path.isfile(os.path.join(out_dir, stem + ".json"))
            lines += [
                f"missing: no {stem}.md (the part failed or timed out"
                + (f"; {stem}.json holds what it measured)" if found else ")"),
                "",
            ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", help="the folder tools/cuda_check.sh wrote")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.out_dir):
        parser.error(f"not a folder: {args.out_dir}")
    path = os.path.join(args.out_dir, "summary.md")
    atomic_write_text(path, summary(args.out_dir))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
