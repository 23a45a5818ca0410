"""The R-FPN CPU protocol: the feedforward 4-conv mask head against R-FPN trained with BPTT-3,
RBP-N and C-RBP-N, on the embedded "contours" and "shapes" sets, several seeds, one schedule.

Example (about 2 hours on 2 cores; a finished run is reused when the command is run again)::

    python tools/rfpn_cpu_protocol.py --steps 6 --seeds 0 1 \\
        --schedule SOLVER.MAX_ITER 600 SOLVER.STEPS "(480, 560)"

Writes every run under ``--out-dir`` and the results to ``--results``.json/.md/.png (the work is
:mod:`crbp_d2.rfpn.experiments.cpu_protocol`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ..rfpn.experiments.cpu_protocol import (
    DATASET_CONFIGS,
    HEADS,
    protocol_runs,
    run_protocol,
)
from ._common import one_line_errors

PROG = "rfpn_cpu_protocol.py"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_CONFIGS))
    parser.add_argument("--heads", nargs="+", default=list(HEADS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=6, help="N of the RBP and C-RBP heads")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (1 thread each)")
    parser.add_argument("--out-dir", default="output/rfpn_cpu_protocol", help="the runs")
    parser.add_argument(
        "--results", default="docs/results/rfpn_cpu_protocol", help="results stem (no suffix)"
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="DATASET=FILE",
        help="another config for a dataset (default: "
        + ", ".join(f"{k}={v}" for k, v in DATASET_CONFIGS.items())
        + ")",
    )
    parser.add_argument(
        "--schedule",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE overrides of every training run (the protocol's schedule); last",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if len(args.schedule) % 2:
        parser.error(f"--schedule takes KEY VALUE pairs, got {args.schedule}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with one_line_errors(PROG, (FileNotFoundError, KeyError, ValueError, RuntimeError)):
        configs = dict(DATASET_CONFIGS)
        for item in args.config:
            dataset, sep, path = item.partition("=")
            if not sep or dataset not in configs:
                raise ValueError(
                    f"--config {item!r}: expected DATASET=FILE, DATASET one of {list(configs)}"
                )
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--config {item!r}: no such file")
            configs[dataset] = os.path.abspath(path)
        runs = protocol_runs(args.datasets, args.heads, args.seeds, args.steps)
        for dataset in args.datasets:
            if not os.path.isfile(configs[dataset]):
                raise FileNotFoundError(f"config of {dataset!r} not found: {configs[dataset]}")
        records = run_protocol(
            runs,
            args.out_dir,
            args.results,
            args.schedule,
            jobs=args.jobs,
            configs=configs,
            progress=not args.no_progress,
        )
        print(f"{len(records)} records; wrote {args.results}.json/.md/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
