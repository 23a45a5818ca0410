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
from ..rfpn.train.arguments import parse_train_args
from ..rfpn.train.launch import launch
from ..rfpn.train.trainer import build_config, train_or_evaluate
from ._common import INPUT_ERRORS, one_line_errors, training_stops_in_one_line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The program's command line (:func:`crbp_d2.rfpn.train.arguments.parse_train_args`)."""
    return parse_train_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    print("Command Line Args:", args)
    with one_line_errors("train_net.py", INPUT_ERRORS + (TypeError,)):
        cfg = build_config(args)  # fail fast, before spawning workers
    with (
        training_stops_in_one_line("train_net.py"),  # a non-finite loss: one line, status 1
        one_line_errors("train_net.py", (CheckpointFileError,)),  # an unreadable checkpoint
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
