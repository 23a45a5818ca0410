"""Train or evaluate a Pathfinder model.

python tools/train_pathfinder.py --config-file configs/pathfinder/pf14_crbp20.yaml [KEY VALUE]
python tools/train_pathfinder.py --config-file ... --resume     # continue OUTPUT_DIR/last.pth
python tools/train_pathfinder.py --config-file ... --overwrite  # start again in OUTPUT_DIR
python tools/train_pathfinder.py --config-file ... --eval-only [--weights W] [--eval-steps 20,60]
torchrun --nproc_per_node 2 tools/train_pathfinder.py --config-file ...   # DDP (gloo on CPU)
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext

from crbp_d2.pathfinder.config import ConfigError, load_config
from crbp_d2.pathfinder.train.loop import Trainer, prepare_output_dir
from crbp_d2.utils.io import json_dumps
from crbp_d2.utils.procs import die_with_torchrun
from crbp_d2.utils.run_dir import RunDirBusyError, RunDirLock, check_output_dir, is_main_launcher

from ._common import interrupt_stops_cleanly, report_input_error, training_stops_in_one_line

PROG = "train_pathfinder.py"


def parse_args(argv=None) -> argparse.Namespace:
    """Options anywhere on the line; every other token is a KEY VALUE config override."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="YAML config (with optional _BASE_)")
    parser.add_argument(
        "--resume", action="store_true", help="continue exactly from OUTPUT_DIR/last.pth"
    )
    parser.add_argument("--resume-from", default="", help="continue from this checkpoint")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an OUTPUT_DIR that holds a run (its files are replaced)",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate a checkpoint and exit")
    parser.add_argument(
        "--weights", default="", help="checkpoint for --eval-only (default best.pth)"
    )
    parser.add_argument(
        "--eval-steps",
        default="",
        help="--eval-only: also evaluate at these step counts, comma-separated (e.g. 20,60)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args, opts = parser.parse_known_args(argv)
    unknown = [o for o in opts if o.startswith("--")]
    if unknown:
        parser.error(f"unrecognized option(s): {' '.join(unknown)}")
    args.opts = opts
    try:
        args.eval_steps = [int(s) for s in args.eval_steps.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--eval-steps must be comma-separated integers, got {args.eval_steps!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    die_with_torchrun()  # a rank of torchrun ends with it (kill -9 included)
    if any(s < 0 for s in args.eval_steps):
        message = f"--eval-steps must be step counts >= 0, got {args.eval_steps}"
        return report_input_error("train_pathfinder.py", ValueError(message))
    try:
        cfg = load_config(args.config_file, args.opts)
        check_output_dir(cfg.OUTPUT_DIR)
        # One run per folder: the lock first, then the "holds a run" check (two runs started
        # together cannot both pass it); torchrun's other ranks run inside rank 0's lock.
        lock = RunDirLock(cfg.OUTPUT_DIR, "train_pathfinder.py")
        last = os.path.join(cfg.OUTPUT_DIR, "last.pth")
        with (
            lock if is_main_launcher() else nullcontext(),
            interrupt_stops_cleanly(PROG, lambda: last if os.path.isfile(last) else None),
            # a non-finite loss: one line, status 1 (the same handler as train_net.py's)
            training_stops_in_one_line(PROG),
        ):
            return _run(args, cfg)
    except (ConfigError, OSError, ValueError, RunDirBusyError) as err:
        return report_input_error("train_pathfinder.py", err)


def _run(args: argparse.Namespace, cfg) -> int:
    """Check the folder (under its lock), then train or evaluate."""
    resume = (args.resume_from or args.resume) if not args.eval_only else False
    if not args.eval_only:
        prepare_output_dir(cfg.OUTPUT_DIR, bool(resume), args.overwrite)
    trainer = Trainer(cfg, resume=resume, progress=not args.no_progress)
    if args.eval_only:
        table = trainer.evaluate_checkpoint(args.weights or None, args.eval_steps)
        print(json_dumps(table))  # NaN as null: valid JSON
        return 0
    best = trainer.train()
    if trainer.dist.is_main:
        print(
            f"[pathfinder] done; best IoU {best.get('iou', float('nan')):.4f} at epoch "
            f"{best.get('epoch')}; outputs in {cfg.OUTPUT_DIR}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
