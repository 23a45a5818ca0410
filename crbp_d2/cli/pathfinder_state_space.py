"""State space of hidden-state trajectories (paper Fig. 1b/1c): PCA over t = 1..T, densities
before/after N, per-image distance between the states at t = N and t = T, KS tests between models.

    python tools/pathfinder_state_space.py --checkpoints bptt=.../best.pth crbp=.../best.pth \
        --max-steps 40 --images 64 --out docs/results/pathfinder_state_space \
        [--compare-step crbp=30]

Writes <out>.json (per model: distance mean/SD, explained variance; KS statistic and p-value for
every pair), <out>_distances.csv (per-image distances) and <out>.png.
"""

from __future__ import annotations

import sys

from crbp_d2.cli.pathfinder_args import analysis_argument_parser, apply_threads, parse_named_paths
from crbp_d2.pathfinder.evaluation.reports import state_space_report
from crbp_d2.utils.counts import count

from ._common import report_input_error


def main(argv=None) -> int:
    p = analysis_argument_parser(__doc__)
    p.add_argument("--max-steps", type=count(1), default=40, help="T")
    p.add_argument("--images", type=count(1), default=64)
    p.add_argument("--pool", type=count(1), default=8, help="states are average-pooled to P x P")
    p.add_argument("--components", type=count(1), default=2, help="PCA dimensions of the distance")
    p.add_argument(
        "--compare-step",
        nargs="*",
        default=[],
        help="NAME=STEP: compare h_STEP with h_T instead of h_N (the authors: C-RBP 30)",
    )
    p.add_argument("--test-length", type=count(1), default=None)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    try:
        compare = {k: int(v) for k, v in (s.split("=") for s in args.compare_step)}
        state_space_report(
            parse_named_paths(args.checkpoints),
            args.out,
            args.max_steps,
            args.images,
            args.pool,
            args.components,
            compare,
            args.test_length,
            args.batch_size,
            args.device,
        )
    except (FileNotFoundError, ValueError) as err:
        return report_input_error("pathfinder_state_space.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
