"""Benchmark the Pathfinder generator: images per second, one process and all cores, PNG included.

    python tools/benchmark_generator.py [--lengths 9 14 20 25] [--scale 1.0] [--workers W]
        [--json docs/results/generator_benchmark.json] [--plot docs/results/generator_benchmark.png]

For each contour length: one process generates and writes (image + label PNG, the CLI's code
path) samples 0..n-1 to a temporary folder; then ``W`` processes (default: all cores) do the same
on disjoint index ranges. Reports ms per image per core and the speed-up over the original
generator's measured single-core time (which excluded PNG writing). Numbers on a shared machine
are upper bounds: the load average at the start is recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crbp_d2.pathfinder.config import REPO_ROOT
from crbp_d2.pathfinder.experiments.generator_speed import (
    REFERENCE_S_PER_IMAGE,
    benchmark,
    write_benchmark,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[9, 14, 20, 25])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the sample counts")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    results_dir = REPO_ROOT / "docs" / "results"
    parser.add_argument("--json", type=Path, default=results_dir / "generator_benchmark.json")
    parser.add_argument("--plot", type=Path, default=results_dir / "generator_benchmark.png")
    args = parser.parse_args(argv)
    unknown = [k for k in args.lengths if k not in REFERENCE_S_PER_IMAGE]
    if unknown:
        parser.error(
            f"no reference timing for lengths {unknown}; use {sorted(REFERENCE_S_PER_IMAGE)}"
        )
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    results = benchmark(args.lengths, args.scale, args.workers, args.seed)
    table_path = write_benchmark(results, args.json, args.plot)
    print(results["markdown"])
    print(f"wrote {args.json}, {args.plot} and {table_path} (README: tools/update_readme.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
