#!/usr/bin/env python
"""Train and evaluate Panoptic FPN / R-FPN (the C-RBP recurrent mask head) with Detectron2.

Examples::

    # train (and evaluate at the end) the CPU quick config on the synthetic dataset
    python tools/train_net.py --config-file configs/quick/R-FPN-R50-CRBP-synthetic.yaml
    # continue an interrupted run from OUTPUT_DIR/last_checkpoint
    python tools/train_net.py --config-file ... --resume
    # evaluate a checkpoint (PQ / COCO AP / mIoU; prints the copypaste lines)
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    # the paper's model on 8 GPUs
    python tools/train_net.py --num-gpus 8 --config-file configs/R-FPN-R50-CRBP.yaml

Trailing ``KEY VALUE`` pairs override the config (unknown keys are an error).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import crbp_d2.config  # noqa: F401  (first: Detectron2 compatibility + registration)

# isort: split
import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import DatasetEvaluators, verify_results
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

import crbp_d2.data  # noqa: F401  (registers the synthetic panoptic datasets)
import crbp_d2.modeling  # noqa: F401  (registers RecurrentMaskHead)
from crbp_d2.config import check_weights_file, get_crbp_cfg
from crbp_d2.data import check_num_classes
from crbp_d2.evaluation import build_evaluator


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's evaluators (hotcoco PQ, COCO AP, semantic mIoU) and the
    ``SOLVER.OPTIMIZER`` switch (SGD or AdamW)."""

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        if cfg.SOLVER.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluators:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)


def build_config(args: argparse.Namespace) -> CfgNode:
    """The frozen config of ``args`` after every check that can fail before training starts:
    unknown keys, invalid recurrent settings, unknown dataset names, class counts that do not match
    the datasets, a missing weights file."""
    cfg = get_crbp_cfg(args.config_file, args.opts)
    check_num_classes(cfg)  # checks the dataset names first
    check_weights_file(cfg, resume=args.resume)
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """Build the config and do Detectron2's default setup (logging, output dir, seeds)."""
    cfg = build_config(args)
    default_setup(cfg, args)
    return cfg


def main(args: argparse.Namespace):
    """Train (``Trainer.train``) or, with ``--eval-only``, load the weights and evaluate.

    Returns:
        The evaluation results (dict of dataset name -> task -> metric) for ``--eval-only``,
        else what ``DefaultTrainer.train`` returns.
    """
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)  # logs the copypaste lines (print_csv_format)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return default_argument_parser().parse_args(argv)


def cli(argv: Optional[List[str]] = None) -> None:
    """Command-line entry: configuration errors are reported as one line, then ``launch``."""
    args = parse_args(argv)
    print("Command Line Args:", args)
    try:
        build_config(args)  # fail fast, before spawning workers
    except (FileNotFoundError, KeyError, ValueError, TypeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        sys.exit(f"train_net.py: error: {message}")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
