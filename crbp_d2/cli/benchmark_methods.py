"""Every learning method and forward solver of the engine: time, memory, Neumann terms, forward
evaluations and gradient fidelity, on the Pathfinder hGRU and the R-FPN head's recurrence.

Example (the README's table; about 30 minutes on 2 cores)::

    python tools/benchmark_methods.py --steps 5 20 80 --out docs/results/methods_cpu

``--shared-machine`` flags the records when other work shares the machine (their seconds are then
marked * and not clean timings).

Writes ``OUT.json`` (records), ``OUT.md`` (table + machine) and ``OUT.png``; the work is
:mod:`crbp_d2.benchmarks.methods`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ..benchmarks.methods import (
    MODELS,
    VARIANTS,
    MethodsBenchmark,
    methods_table,
    run_methods_benchmark,
    write_methods_results,
)
from ..utils.machine import SHARED_MACHINE_ENV
from ._common import one_line_errors


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = MethodsBenchmark()
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20, 80])
    parser.add_argument("--size", type=int, default=defaults.size, help="pathfinder image side")
    parser.add_argument("--channels", type=int, default=defaults.channels)
    parser.add_argument("--kernel", type=int, default=defaults.kernel)
    parser.add_argument("--rois", type=int, default=defaults.rois, help="rfpn_head RoIs")
    parser.add_argument("--width", type=int, default=defaults.width, help="rfpn_head channels")
    parser.add_argument("--neumann-steps", type=int, default=defaults.neumann_steps)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement")
    parser.add_argument("--out", help="results stem: writes OUT.json, OUT.md and OUT.png")
    parser.add_argument(
        "--shared-machine",
        action="store_true",
        help="flag every record shared_machine (other work ran beside it: its seconds are not "
        f"clean timings); as {SHARED_MACHINE_ENV}=1. Without it, {SHARED_MACHINE_ENV} or the "
        "load average decides",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.shared_machine:  # the workers, one process per configuration, read it
        os.environ[SHARED_MACHINE_ENV] = "1"
    settings = MethodsBenchmark(
        size=args.size,
        channels=args.channels,
        kernel=args.kernel,
        rois=args.rois,
        width=args.width,
        neumann_steps=args.neumann_steps,
        device=args.device,
        threads=args.threads,
    )
    with one_line_errors("benchmark_methods.py", (ValueError, RuntimeError)):
        records = run_methods_benchmark(
            settings, args.models, args.variants, args.steps, progress=not args.no_progress
        )
    print(methods_table(records))
    if args.out:
        paths = write_methods_results(records, args.out)
        print("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
