#!/usr/bin/env python
"""PQ of one R-FPN checkpoint as a function of the recurrent steps run at test time.

The paper's stability result (Linsley et al. 2020, Fig. 5): a model trained with C-RBP stays flat
once past its training steps N, while BPTT-trained models fall apart when run longer.

Example::

    python tools/timestep_sweep.py --config-file configs/quick/R-FPN-R50-CRBP-synthetic.yaml \\
        --output output/sweep --steps 1-30 MODEL.WEIGHTS output/quick/.../model_final.pth

Writes ``timestep_sweep.csv`` (steps, PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st) and
``timestep_sweep.png`` into ``--output``.

Cost: ``--mode onepass`` (default) runs the model once per image at the largest step count,
keeps the mask of every step and rebuilds the panoptic output of each step count from it
(exact: step t of a long run is the state of a t-step run, and nothing else depends on the mask
head); one backbone pass instead of one per step count. ``--mode rerun`` re-runs the whole model
for each step count (the authors' procedure; T times the cost). Single process only.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

import crbp_d2.config  # noqa: F401  (first: Detectron2 compatibility + registration)

# isort: split
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import crbp_d2.data  # noqa: F401  (registers the synthetic panoptic datasets)
import crbp_d2.modeling  # noqa: F401  (registers RecurrentMaskHead)
from crbp_d2.config import check_weights_file, get_crbp_cfg
from crbp_d2.data import check_dataset_name
from crbp_d2.evaluation import HotcocoPanopticEvaluator
from crbp_d2.modeling import panoptic_at_step, recurrent_mask_head

logger = logging.getLogger("crbp_d2.timestep_sweep")

COLUMNS = ("steps", "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
AP_COLUMN = "AP_segm"  # with --segm-ap: COCO mask AP of the detections at each step count


def parse_steps(text: str) -> List[int]:
    """ "1-30" or "1,2,5" (or a mix, "1-3,10") -> sorted unique step counts >= 1."""
    steps = set()
    try:
        for part in text.split(","):
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                steps.update(range(low, high + 1))
            elif part.strip():
                steps.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps: expected e.g. '1-30' or '1,2,5', got {text!r}")
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"--steps: step counts must be >= 1, got {text!r}")
    return sorted(steps)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="folder for the CSV, the plot and logs")
    parser.add_argument("--steps", type=parse_steps, default=parse_steps("1-30"), help="e.g. 1-30")
    parser.add_argument("--dataset", default=None, help="default: the config's DATASETS.TEST[0]")
    parser.add_argument("--mode", choices=("onepass", "rerun"), default="onepass")
    parser.add_argument(
        "--segm-ap",
        action="store_true",
        help="also compute COCO mask AP per step count (sensitive even when the panoptic merge "
        "keeps few instances; one COCOeval per step count)",
    )
    parser.add_argument("--label", default=None, help="legend label (default: config name)")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="CSV",
        help="[LABEL=]CSV of another sweep to draw in the plot (repeat for several)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def _row(steps: int, results: Dict) -> Dict[str, float]:
    metrics = results["panoptic_seg"]
    row = {"steps": steps, **{k: float(metrics[k]) for k in COLUMNS[1:]}}
    if "segm" in results:
        row[AP_COLUMN] = float(results["segm"]["AP"])
    return row


def build_step_evaluator(dataset: str, output: str, segm_ap: bool) -> DatasetEvaluators:
    """PQ (hotcoco) and, with ``segm_ap``, COCO mask AP (pycocotools) of one step count."""
    evaluators = [HotcocoPanopticEvaluator(dataset, output)]
    if segm_ap:
        evaluators.append(
            COCOEvaluator(dataset, tasks=("segm",), distributed=True, use_fast_impl=False)
        )
    return DatasetEvaluators(evaluators)


def sweep_onepass(
    model, loader, dataset: str, steps: List[int], output: str, segm_ap: bool = False
) -> List[Dict]:
    head = recurrent_mask_head(model)
    head.test_steps = max(steps)
    head.return_timecourse = True
    evaluators = {
        t: build_step_evaluator(dataset, os.path.join(output, f"steps_{t}"), segm_ap) for t in steps
    }
    for evaluator in evaluators.values():
        evaluator.reset()
    with inference_context(model), torch.no_grad():
        for index, inputs in enumerate(loader):
            outputs = model(inputs)
            for t, evaluator in evaluators.items():
                evaluator.process(inputs, [panoptic_at_step(model, o, t) for o in outputs])
            if (index + 1) % 50 == 0:
                logger.info(f"{index + 1}/{len(loader)} images")
    head.return_timecourse = False
    return [_row(t, evaluators[t].evaluate()) for t in steps]


def sweep_rerun(
    model, loader, dataset: str, steps: List[int], output: str, segm_ap: bool = False
) -> List[Dict]:
    head = recurrent_mask_head(model)
    rows = []
    for t in steps:
        head.test_steps = t
        evaluator = build_step_evaluator(dataset, os.path.join(output, f"steps_{t}"), segm_ap)
        rows.append(_row(t, inference_on_dataset(model, loader, evaluator)))
        logger.info(f"steps {t}: PQ {rows[-1]['PQ']:.2f}")
    return rows


def write_csv(rows: List[Dict], path: str) -> None:
    columns = COLUMNS + ((AP_COLUMN,) if AP_COLUMN in rows[0] else ())
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (row[k] if k == "steps" else f"{row[k]:.4f}") for k in columns})


def read_csv(path: str) -> List[Dict]:
    with open(path, newline="") as f:
        return [
            {k: (int(v) if k == "steps" else float(v)) for k, v in r.items()}
            for r in csv.DictReader(f)
        ]


def plot(curves: Dict[str, List[Dict]], train_steps: Optional[int], path: str) -> None:
    """PQ (and mask AP when present) vs test steps, one colour per curve; the first curve also
    gets PQ things / PQ stuff dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    has_ap = False
    for index, (label, rows) in enumerate(curves.items()):
        x = [r["steps"] for r in rows]
        line = ax.plot(x, [r["PQ"] for r in rows], marker="o", markersize=3, label=f"{label} PQ")[0]
        color = line.get_color()
        if AP_COLUMN in rows[0]:
            has_ap = True
            ax.plot(x, [r[AP_COLUMN] for r in rows], "-.", color=color, label=f"{label} mask AP")
        if index == 0:
            ax.plot(x, [r["PQ_th"] for r in rows], "--", color=color, alpha=0.6, label="PQ things")
            ax.plot(x, [r["PQ_st"] for r in rows], ":", color=color, alpha=0.6, label="PQ stuff")
    if train_steps is not None:
        ax.axvline(
            train_steps, color="gray", lw=0.8, ls="-.", label=f"trained with N={train_steps}"
        )
    ax.set_xlabel("recurrent steps at test time")
    ax.set_ylabel("PQ / mask AP (%)" if has_ap else "panoptic quality (%)")
    ax.set_title("PQ vs test-time steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_overlay(item: str):
    """ "LABEL=path.csv" or "path.csv" (label: the file name) -> (label, path)."""
    if "=" in item:
        label, path = item.rsplit("=", 1)
        return label, path
    return os.path.splitext(os.path.basename(item))[0], item


def main(args: argparse.Namespace) -> List[Dict]:
    """Run the sweep; returns the rows written to the CSV."""
    cfg = get_crbp_cfg(args.config_file, args.opts)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        raise ValueError("no dataset: pass --dataset or set DATASETS.TEST in the config")
    check_dataset_name(dataset, "--dataset / DATASETS.TEST[0]")
    check_weights_file(cfg)
    overlays = [parse_overlay(item) for item in args.overlay]
    for _, other in overlays:
        if not os.path.isfile(other):
            raise FileNotFoundError(f"--overlay {other!r}: no such file")
    cfg.freeze()
    os.makedirs(args.output, exist_ok=True)
    setup_logger(os.path.join(args.output, "log.txt"), name="crbp_d2")
    setup_logger(os.path.join(args.output, "log.txt"), name="detectron2", abbrev_name="d2")

    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    head = recurrent_mask_head(model)
    head.engine.halt_tolerance = None  # every step count runs exactly its steps
    loader = build_detection_test_loader(cfg, dataset)
    run = sweep_onepass if args.mode == "onepass" else sweep_rerun
    rows = run(model, loader, dataset, args.steps, args.output, args.segm_ap)

    csv_path = os.path.join(args.output, "timestep_sweep.csv")
    write_csv(rows, csv_path)
    label = args.label or os.path.splitext(os.path.basename(args.config_file))[0]
    curves = {label: rows}
    for other_label, other in overlays:
        curves[other_label] = read_csv(other)
    plot(
        curves,
        cfg.MODEL.ROI_MASK_HEAD.RECURRENT.TIMESTEPS,
        os.path.join(args.output, "timestep_sweep.png"),
    )
    logger.info(
        "steps,PQ,PQ_th,PQ_st,AP_segm\n"
        + "\n".join(
            f"{r['steps']},{r['PQ']:.2f},{r['PQ_th']:.2f},{r['PQ_st']:.2f},"
            f"{r.get(AP_COLUMN, float('nan')):.2f}"
            for r in rows
        )
    )
    logger.info(f"wrote {csv_path} and timestep_sweep.png")
    return rows


def cli(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        main(args)
    except (FileNotFoundError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        sys.exit(f"timestep_sweep.py: error: {message}")


if __name__ == "__main__":
    cli()
