"""IoU vs inference steps t = 0..T for recurrent models (BPTT degrades after its N, C-RBP holds).

    python tools/pathfinder_steps.py --checkpoints bptt=output/pathfinder/pf14_bptt6/best.pth \
        crbp=output/pathfinder/pf14_crbp20/best.pth --max-steps 40 \
        --out docs/results/pathfinder_steps \
        [--test-length 14] [--test-size 1000]

Writes <out>.csv/.json (one row per model and step) and <out>.png.
"""

from __future__ import annotations

import sys

from crbp_d2.cli.pathfinder_args import analysis_argument_parser, apply_threads, parse_named_paths
from crbp_d2.pathfinder.evaluation.reports import steps_report
from crbp_d2.utils.counts import count

from ._common import report_input_error


def main(argv=None) -> int:
    p = analysis_argument_parser(__doc__)
    p.add_argument("--max-steps", type=count(0), default=40)
    p.add_argument(
        "--test-length", type=count(1), default=None, help="default: each model's test length"
    )
    p.add_argument("--test-size", type=count(1), default=None)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    try:
        steps_report(
            parse_named_paths(args.checkpoints),
            args.out,
            args.max_steps,
            args.test_length,
            args.test_size,
            args.batch_size,
            args.device,
        )
    except (FileNotFoundError, ValueError) as err:
        return report_input_error("pathfinder_steps.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
