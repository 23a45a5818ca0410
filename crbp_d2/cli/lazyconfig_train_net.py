"""Train and evaluate Panoptic FPN / R-FPN from a LazyConfig file (Detectron2's
``tools/lazyconfig_train_net.py`` conventions).

Examples::

    # the paper's R-FPN on COCO panoptic, 8 GPUs (or configs/lazy/FPN-R50.py: the baseline)
    python tools/lazyconfig_train_net.py --num-gpus 8 --config-file configs/lazy/R-FPN-R50-CRBP.py
    # overrides are key=value (an unknown key is an error; +key=value adds one)
    python tools/lazyconfig_train_net.py --config-file configs/lazy/R-FPN-R50-CRBP.py \\
        model.roi_heads.mask_head.engine.TIMESTEPS=10 train.output_dir=output/lazy/crbp10
    # evaluate a checkpoint (PQ / COCO AP / mIoU)
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=W
    # the smallest run, CPU, synthetic data (about a minute); --num-gpus 2 on a CPU config
    # starts 2 processes with gloo (as tools/train_net.py)
    python tools/lazyconfig_train_net.py \\
        --config-file configs/lazy/quick/R-FPN-R50-CRBP-synthetic-test.py

The training loop is :mod:`crbp_d2.rfpn.train.trainer_lazy`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from detectron2.engine import default_argument_parser

from ..rfpn.checkpoint import CheckpointFileError
from ..rfpn.data.resumable import DatasetError
from ..rfpn.train.launch import DistUrlError, launch
from ..rfpn.train.trainer_lazy import build_lazy_config, train_or_evaluate_lazy
from ..utils.procs import die_with_torchrun
from ._common import (
    INPUT_ERRORS,
    RUN_DIR_FLAGS,
    add_run_dir_flags,
    check_process_counts,
    detectron2_last_checkpoint,
    interrupt_stops_cleanly,
    one_line_errors,
    run_dir_guard,
    training_stops_in_one_line,
)

PROG = "lazyconfig_train_net.py"


_FLAGS = ("--resume", "--eval-only", "--allow-partial-weights") + RUN_DIR_FLAGS


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Detectron2's ``default_argument_parser``; ``--resume`` and ``--eval-only`` may stand
    anywhere on the line (also after the ``key=value`` overrides, which its catch-all would
    otherwise swallow them into)."""

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in argv if a in _FLAGS]
    parser = add_run_dir_flags(default_argument_parser(epilog=__doc__))
    parser.description = (
        "Train and evaluate Panoptic FPN / R-FPN from a LazyConfig .py file (trailing key=value "
        "overrides, e.g. train.max_iter=100; +key=value adds a key)."
    )
    args = parser.parse_args(flags + [a for a in argv if a not in _FLAGS])
    check_process_counts(parser, args)
    args.resume = args.resume or args.resume_or_start
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    die_with_torchrun()  # a rank of torchrun ends with it (kill -9 included)
    print("Command Line Args:", args)
    with one_line_errors(PROG, INPUT_ERRORS + (TypeError,)):
        cfg = build_lazy_config(args)  # fail fast, before spawning workers
    with (
        run_dir_guard(PROG, cfg.train.output_dir, args),  # one run per folder
        interrupt_stops_cleanly(PROG, detectron2_last_checkpoint(cfg.train.output_dir)),
        training_stops_in_one_line(PROG),
        one_line_errors(PROG, (CheckpointFileError, DistUrlError, DatasetError)),
    ):
        launch(
            train_or_evaluate_lazy,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            device=cfg.train.get("device", "cuda"),  # CUDA: Detectron2's launch; else gloo
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
