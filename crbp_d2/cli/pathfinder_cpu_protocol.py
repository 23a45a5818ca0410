"""The Pathfinder CPU protocol: C-RBP, BPTT and RBP on a small PF9 variant, on 2 CPU cores.

    python tools/pathfinder_cpu_protocol.py                 # train (2 jobs side by side) + evaluate
    python tools/pathfinder_cpu_protocol.py --skip-training # evaluate existing checkpoints again
    python tools/pathfinder_cpu_protocol.py --methods crbp cjfb --stem pathfinder_cpu_cheap

Training runs ``configs/pathfinder/cpu_protocol/{crbp,bptt,rbp}.yaml`` through
``tools/train_pathfinder.py`` as 1-thread jobs: slot 1 runs C-RBP, slot 2 runs BPTT then RBP.
Then every model's last checkpoint is evaluated on the same test images after N and 3N steps
(and every step 0..3N for the plot), next to the marker-only and flood-fill baselines of those
images. Writes ``<results>/pathfinder_cpu_protocol.json`` (a list of records: model, method,
train_length, test_length, train_steps, eval_steps, iou, ...), ``..._summary.json`` (machine,
timings, the protocol's checks, training diagnostics) and two PNGs (IoU vs steps, training).
"""

from __future__ import annotations

import argparse
import os
import sys

from crbp_d2.pathfinder.config import REPO_ROOT
from crbp_d2.pathfinder.experiments.cpu_protocol import (
    METHODS,
    STEM,
    TrainingFailed,
    run_protocol,
    write_markdown,
)

from ._common import report_input_error


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out-dir", default=os.path.join(REPO_ROOT, "output", "pathfinder", "cpu_protocol")
    )
    p.add_argument("--results", default=os.path.join(REPO_ROOT, "docs", "results"))
    p.add_argument("--skip-training", action="store_true")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        help="the methods to train (configs/pathfinder/cpu_protocol/METHOD.yaml), two jobs",
    )
    p.add_argument("--stem", default=STEM, help="results file names (default: %(default)s)")
    p.add_argument("--eval-threads", type=int, default=2)
    p.add_argument(
        "--report-only", action="store_true", help="only rewrite the Markdown table from the JSON"
    )
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every training job"
    )
    args = p.parse_args(argv)
    if args.report_only:
        write_markdown(os.path.join(args.results, args.stem))
        return 0
    try:
        run_protocol(
            args.out_dir,
            args.results,
            args.skip_training,
            args.eval_threads,
            args.opts,
            methods=args.methods,
            stem_name=args.stem,
        )
    except ValueError as err:
        return report_input_error("pathfinder_cpu_protocol.py", err)
    except TrainingFailed as err:
        print(f"pathfinder_cpu_protocol.py: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
