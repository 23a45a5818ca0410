"""Non-learned Pathfinder baselines: marker only and morphological flood fill (IoU at 150 px).

    python tools/pathfinder_baselines.py --length 14 --num 1000 --seed 1 [--size 150]
        [--data DIR --split test] [--radii 1 2 3 4] [--json OUT.json] [--stats]

Without ``--data`` the samples are generated on the fly (samples 0..num-1 of ``--seed``); with
``--data`` they are read from a dataset written by tools/generate_pathfinder.py (or the authors'
PNGs with ``--list``). Images go through the paper's transform (bicubic to ``--size``, label > 0.2,
no flip). ``--stats`` also prints the generator's path statistics (on-the-fly only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crbp_d2.contours.generator import GenerationError
from crbp_d2.pathfinder.evaluation.baselines import baselines_report, baselines_table
from crbp_d2.utils.io import atomic_write_json

from ._common import report_input_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=14)
    parser.add_argument("--num", type=int, default=1000, help="images to score")
    parser.add_argument(
        "--seed", type=int, default=1, help="on-the-fly seed (default 1: not the train seed 0)"
    )
    parser.add_argument("--size", type=int, default=150, help="evaluation resolution (paper: 150)")
    parser.add_argument(
        "--data", default=None, help="dataset directory (generate_pathfinder.py --out)"
    )
    parser.add_argument("--split", default="test", choices=("train", "test", "all"))
    parser.add_argument(
        "--list", default=None, help="authors' 'path label' list, relative to --data"
    )
    parser.add_argument(
        "--radii", type=int, nargs="+", default=[1, 2, 3, 4], help="flood-fill radii (px)"
    )
    parser.add_argument("--ink-threshold", type=float, default=0.2)
    parser.add_argument("--legacy-quirks", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--stats", action="store_true", help="print generator path statistics too")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num must be >= 1, got {args.num}")
    if any(r < 0 for r in args.radii):
        parser.error(f"--radii must be >= 0, got {args.radii}")
    if args.stats and args.data is not None:
        parser.error("--stats needs on-the-fly data (no --data)")
    try:
        report = baselines_report(
            args.length,
            args.num,
            args.seed,
            args.size,
            args.data,
            args.split,
            args.list,
            args.radii,
            args.ink_threshold,
            args.legacy_quirks,
            args.stats,
        )
    except (ValueError, FileNotFoundError, GenerationError) as error:
        return report_input_error("pathfinder_baselines.py", error)
    print(baselines_table(report))
    for key, value in report.get("path_statistics", {}).items():
        print(f"{key}: {value:.4g}")
    if args.json is not None:
        atomic_write_json(report, args.json, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
