"""Train and evaluate Panoptic FPN / R-FPN (the C-RBP recurrent mask head) with Detectron2.

Examples::

    # train (and evaluate at the end) the quick recipe on the synthetic shapes set
    python tools/train_net.py --config-file configs/quick/R-FPN-CRBP-synthetic.yaml
    # continue an interrupted run from OUTPUT_DIR/last_checkpoint (the same command + --resume)
    python tools/train_net.py --config-file ... [KEY VALUE ...] --resume
    # evaluate a checkpoint (PQ / COCO AP / mIoU; prints the copypaste lines)
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    # the paper's model on 8 GPUs
    python tools/train_net.py --num-gpus 8 --config-file configs/R-FPN-R50-CRBP.yaml
    # 2 worker processes on the CPU (gloo; --num-gpus is the number of processes)
    python tools/train_net.py --num-gpus 2 --config-file configs/quick/R-FPN-CRBP-synthetic.yaml

Trailing ``KEY VALUE`` pairs override the config (unknown keys are an error). The trainer is
:class:`crbp_d2.rfpn.train.trainer.Trainer`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..rfpn.checkpoint import CheckpointFileError
from ..rfpn.data.resumable import DatasetError
from ..rfpn.train.arguments import FLAGS, parse_train_args, train_argument_parser
from ..rfpn.train.launch import DistUrlError, launch
from ..rfpn.train.trainer import build_config, train_or_evaluate
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

# The flags that may stand anywhere on the line (rfpn.train.arguments.FLAGS and the program's own).
_FLAGS = FLAGS + ("--allow-partial-weights",) + RUN_DIR_FLAGS


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Detectron2's ``default_argument_parser`` (:func:`crbp_d2.rfpn.train.arguments.
    train_argument_parser`) with the run-folder flags; ``--resume``, ``--eval-only`` and the
    other flags may stand anywhere on the line (also after the ``KEY VALUE`` overrides)."""
    parser = add_run_dir_flags(train_argument_parser(epilog=__doc__))
    parser.description = (
        "Train and evaluate Panoptic FPN / R-FPN (yacs .yaml configs; trailing KEY VALUE pairs "
        "override the config)."
    )
    args = parse_train_args(argv, parser, _FLAGS)
    check_process_counts(parser, args)
    args.resume = args.resume or args.resume_or_start
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    die_with_torchrun()  # a rank of torchrun ends with it (kill -9 included)
    print("Command Line Args:", args)
    with one_line_errors("train_net.py", INPUT_ERRORS + (TypeError,)):
        cfg = build_config(args)  # fail fast, before spawning workers
    with (
        run_dir_guard("train_net.py", cfg.OUTPUT_DIR, args),  # one run per folder
        interrupt_stops_cleanly("train_net.py", detectron2_last_checkpoint(cfg.OUTPUT_DIR)),
        training_stops_in_one_line("train_net.py"),  # a non-finite loss: one line, status 1
        # an unreadable checkpoint, a rendezvous port in use
        one_line_errors("train_net.py", (CheckpointFileError, DistUrlError, DatasetError)),
    ):
        launch(
            train_or_evaluate,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            device=cfg.MODEL.DEVICE,  # CUDA: Detectron2's launch (NCCL); else gloo on the CPU
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
