"""Memory and time of one training step vs recurrent steps, per learning method.

The Pathfinder hGRU core (a (B, C, S, S) positive drive, the hGRU for N steps, a 1x1 readout,
cross-entropy + LCP for the C- methods); see :mod:`crbp_d2.benchmarks.memory` for the records.
Writes JSON records, a Markdown table (``.md``, for tools/update_readme.py) and a PNG plot.

Usage:
  python tools/benchmark_memory.py --steps 5 20 80 --methods bptt crbp \\
      --json docs/results/memory_cpu.json --plot docs/results/memory_cpu.png
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from ..benchmarks.memory import (
    MemoryBenchmark,
    format_table,
    run_memory_benchmark,
    write_memory_results,
)
from ..recurrent import METHODS


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20, 80])
    parser.add_argument("--methods", nargs="+", default=["bptt", "crbp"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=25)
    parser.add_argument("--kernel", type=int, default=15)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--neumann-steps", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--json", help="write the records here (a JSON list; also .md and .png)")
    parser.add_argument("--plot", help="PNG plot path (default: the JSON path with .png)")
    args = parser.parse_args(argv)
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        parser.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    if any(s < 1 for s in args.steps):
        parser.error(f"--steps must all be >= 1, got {args.steps}")
    if args.json and not args.json.endswith(".json"):
        parser.error(f"--json must end in .json (the table and plot go beside it), got {args.json}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    settings = MemoryBenchmark(
        batch=args.batch,
        channels=args.channels,
        kernel=args.kernel,
        size=args.size,
        neumann_steps=args.neumann_steps,
        device=args.device,
        threads=args.threads,
    )
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    records = run_memory_benchmark(settings, args.methods, args.steps)
    print(format_table(records))
    print(f"device: {records[0]['device']}, torch {records[0]['torch']}")
    if args.json:
        paths = write_memory_results(records, args.json, args.plot)
        print(f"wrote {paths['json']}, {paths['png']} and {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
