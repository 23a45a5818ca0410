"""Generalization matrix: models trained on one contour length, evaluated on 9/14/20/25.

    python tools/pathfinder_generalization.py \
        --checkpoints bptt=output/pathfinder/pf14_bptt6/best.pth \
        crbp=output/pathfinder/pf14_crbp20/best.pth --out docs/results/pathfinder_generalization \
        [--lengths 9 14 20 25] [--test-size 1000] [--data DATA.SOURCE on_the_fly]

Writes <out>.csv, <out>.json and <out>.png.
"""

from __future__ import annotations

import sys

from crbp_d2.cli.pathfinder_args import analysis_argument_parser, apply_threads, parse_named_paths
from crbp_d2.pathfinder.evaluation.analysis import PAPER_LENGTHS
from crbp_d2.pathfinder.evaluation.reports import generalization_report
from crbp_d2.utils.counts import count

from ._common import report_input_error


def main(argv=None) -> int:
    p = analysis_argument_parser(__doc__)
    p.add_argument("--lengths", type=count(1), nargs="+", default=list(PAPER_LENGTHS))
    p.add_argument(
        "--test-size", type=count(1), default=None, help="images per length (default: config's)"
    )
    p.add_argument(
        "--steps", type=count(0), default=None, help="inference steps (default: each model's)"
    )
    p.add_argument("--data", nargs="*", default=[], help="KEY VALUE overrides of the test data")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    try:
        generalization_report(
            parse_named_paths(args.checkpoints),
            args.out,
            args.lengths,
            args.test_size,
            args.steps,
            args.batch_size,
            args.device,
            args.data,
        )
    except (FileNotFoundError, ValueError, KeyError) as err:
        return report_input_error("pathfinder_generalization.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
