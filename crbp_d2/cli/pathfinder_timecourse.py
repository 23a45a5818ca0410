"""The segmentation of one test image step by step (paper Fig. 1a).

    python tools/pathfinder_timecourse.py --checkpoint output/pathfinder/pf14_crbp20/best.pth \
        --max-steps 40 --index 0 --out docs/results/pathfinder_timecourse

The image is run inside a test batch (the hGRU's BatchNorm uses batch statistics). Writes
<out>.json (per-step IoU of that image) and <out>.png (probability maps, coloured timecourse).
"""

from __future__ import annotations

import argparse
import sys

from crbp_d2.pathfinder.evaluation.reports import timecourse_report
from crbp_d2.utils.counts import count

from ._common import report_input_error


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output stem (no extension)")
    p.add_argument("--max-steps", type=count(0), default=40)
    p.add_argument("--index", type=int, default=0, help="image index inside the first test batch")
    p.add_argument("--test-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        timecourse_report(
            args.checkpoint,
            args.out,
            args.max_steps,
            args.index,
            args.test_length,
            args.batch_size,
            args.device,
        )
    except (FileNotFoundError, ValueError) as err:
        return report_input_error("pathfinder_timecourse.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
