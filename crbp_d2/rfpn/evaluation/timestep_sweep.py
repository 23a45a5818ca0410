"""PQ of one R-FPN checkpoint as a function of the recurrent steps run at test time.

The paper's stability result (Linsley et al. 2020, Fig. 5): a model trained with C-RBP stays flat
once past its training steps N, while BPTT-trained models fall apart when run longer.

:func:`run_timestep_sweep` writes ``timestep_sweep.csv`` (steps, PQ, SQ, RQ, PQ_th, SQ_th, RQ_th,
PQ_st, SQ_st, RQ_st; with ``segm_ap`` also AP_segm) and ``timestep_sweep.png`` into its output
folder.

Cost: :func:`sweep_onepass` (the default) runs the model once per image at the largest step
count, keeps the mask of every step and rebuilds the panoptic output of each step count from it
(exact: step t of a long run is the state of a t-step run, and nothing else depends on the mask
head); one backbone pass instead of one per step count. :func:`sweep_rerun` re-runs the whole
model for each step count (the authors' procedure; T times the cost). Single process only.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from torch import nn

from ...utils import atomic_write_text, pyplot, write_plot
from ...utils.counts import parse_counts
from ..config import check_device, check_weights_file, get_crbp_cfg
from ..data import check_dataset_name
from ..modeling import panoptic_at_step, recurrent_mask_head
from .gt_box import build_gt_box_loader, evaluate_masks_on_gt_boxes
from .panoptic_evaluation import HotcocoPanopticEvaluator

__all__ = [
    "AP_COLUMN",
    "COLUMNS",
    "GT_BOX_COLUMNS",
    "MODES",
    "build_step_evaluator",
    "parse_overlay",
    "parse_steps",
    "plot_sweep",
    "read_csv",
    "run_timestep_sweep",
    "sweep_onepass",
    "sweep_rerun",
    "write_csv",
]

logger = logging.getLogger("crbp_d2.timestep_sweep")

COLUMNS = ("steps", "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
AP_COLUMN = "AP_segm"  # with segm_ap: COCO mask AP of the detections at each step count
# with gt_box: the mask head alone on ground-truth boxes (crbp_d2.rfpn.evaluation.gt_box)
GT_BOX_COLUMNS = ("gt_box_mIoU", "gt_box_mBF")
MODES = ("onepass", "rerun")
CSV_NAME, PLOT_NAME = "timestep_sweep.csv", "timestep_sweep.png"

Row = Dict[str, float]


def parse_steps(text: str) -> List[int]:
    """ "1-30" or "1,2,5" (or a mix, "1-3,10") -> sorted unique step counts >= 1
    (:func:`crbp_d2.utils.counts.parse_counts`; a reversed range "5-1" is named as such)."""
    return parse_counts(text, minimum=1, what="step counts")


def parse_overlay(item: str) -> Tuple[str, str]:
    """ "LABEL=path.csv" or "path.csv" (label: the file name) -> (label, path)."""
    if "=" in item:
        label, path = item.rsplit("=", 1)
        return label, path
    return os.path.splitext(os.path.basename(item))[0], item


def _row(steps: int, results: Mapping) -> Row:
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
    model: nn.Module,
    loader: Iterable,
    dataset: str,
    steps: Sequence[int],
    output: str,
    segm_ap: bool = False,
) -> List[Row]:
    """One row per step count from one pass at ``max(steps)`` (see the module docstring);
    evaluator dumps go to ``output/steps_T``."""
    head = recurrent_mask_head(model)
    head.test_steps = max(steps)
    head.return_timecourse = True
    evaluators = {
        t: build_step_evaluator(dataset, os.path.join(output, f"steps_{t}"), segm_ap) for t in steps
    }
    for evaluator in evaluators.values():
        evaluator.reset()
    try:
        with inference_context(model), torch.no_grad():
            for index, inputs in enumerate(loader):
                outputs = model(inputs)
                semantic = [o["sem_seg"].argmax(dim=0) for o in outputs]
                for t, evaluator in evaluators.items():
                    evaluator.process(
                        inputs,
                        [panoptic_at_step(model, o, t, s) for o, s in zip(outputs, semantic)],
                    )
                if (index + 1) % 50 == 0:
                    logger.info(f"{index + 1}/{len(loader)} images")
    finally:
        head.return_timecourse = False
    return [_row(t, evaluators[t].evaluate()) for t in steps]


def sweep_rerun(
    model: nn.Module,
    loader: Iterable,
    dataset: str,
    steps: Sequence[int],
    output: str,
    segm_ap: bool = False,
) -> List[Row]:
    """One row per step count, each from a full evaluation at that step count."""
    head = recurrent_mask_head(model)
    rows = []
    for t in steps:
        head.test_steps = t
        evaluator = build_step_evaluator(dataset, os.path.join(output, f"steps_{t}"), segm_ap)
        rows.append(_row(t, inference_on_dataset(model, loader, evaluator)))
        logger.info(f"steps {t}: PQ {rows[-1]['PQ']:.2f}")
    return rows


def write_csv(rows: List[Row], path: str) -> None:
    """The rows as CSV (``COLUMNS``, plus ``AP_segm`` and the GT-box columns if the rows have
    them), atomically."""
    columns = COLUMNS + tuple(c for c in (AP_COLUMN,) + GT_BOX_COLUMNS if c in rows[0])
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (row[k] if k == "steps" else f"{row[k]:.4f}") for k in columns})
    atomic_write_text(path, text.getvalue())


def read_csv(path: str) -> List[Row]:
    """The rows of a CSV written by :func:`write_csv`."""
    with open(path, newline="") as f:
        return [
            {k: (int(v) if k == "steps" else float(v)) for k, v in r.items()}
            for r in csv.DictReader(f)
        ]


def plot_sweep(curves: Mapping[str, List[Row]], train_steps: Optional[int], path: str) -> None:
    """PQ (and mask AP when present) vs test steps, one colour per curve; the first curve also
    gets PQ things / PQ stuff dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    has_ap = False
    for index, (label, rows) in enumerate(curves.items()):
        x = [r["steps"] for r in rows]
        line = ax.plot(x, [r["PQ"] for r in rows], marker="o", markersize=3, label=f"{label} PQ")[0]
        color = line.get_color()
        if AP_COLUMN in rows[0]:
            has_ap = True
            ax.plot(x, [r[AP_COLUMN] for r in rows], "-.", color=color, label=f"{label} mask AP")
        if GT_BOX_COLUMNS[0] in rows[0]:
            has_ap = True
            values = [r[GT_BOX_COLUMNS[0]] for r in rows]
            ax.plot(x, values, ls=(0, (1, 1)), color=color, label=f"{label} mIoU on GT boxes")
        if index == 0:
            ax.plot(x, [r["PQ_th"] for r in rows], "--", color=color, alpha=0.6, label="PQ things")
            ax.plot(x, [r["PQ_st"] for r in rows], ":", color=color, alpha=0.6, label="PQ stuff")
    if train_steps is not None:
        ax.axvline(
            train_steps, color="gray", lw=0.8, ls="-.", label=f"trained with N={train_steps}"
        )
    ax.set_xlabel("recurrent steps at test time")
    ax.set_ylabel("PQ / mask AP / mask IoU (%)" if has_ap else "panoptic quality (%)")
    ax.set_title("PQ vs test-time steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def run_timestep_sweep(
    config_file: str,
    output: str,
    steps: Sequence[int],
    opts: Sequence[str] = (),
    dataset: Optional[str] = None,
    mode: str = "onepass",
    segm_ap: bool = False,
    label: Optional[str] = None,
    overlays: Sequence[str] = (),
    gt_box: bool = False,
) -> List[Row]:
    """Sweep the checkpoint ``MODEL.WEIGHTS`` of ``config_file`` + ``opts`` over ``steps`` test
    steps on ``dataset`` (default ``DATASETS.TEST[0]``); write the CSV, the plot (with the
    ``[LABEL=]CSV`` ``overlays`` of other sweeps) and ``log.txt`` into ``output``. With
    ``gt_box`` the rows also hold the mask head's mIoU and boundary F-score on the ground-truth
    boxes at each step count (one more pass over the dataset).

    Returns the rows written to the CSV. Bad input (unknown dataset or key, missing weights or
    overlay file, unknown mode) raises ``KeyError`` / ``FileNotFoundError`` / ``ValueError``
    before the model is built.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {MODES}")
    cfg = get_crbp_cfg(config_file, opts)
    dataset = dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        raise ValueError("no dataset: pass --dataset or set DATASETS.TEST in the config")
    check_dataset_name(dataset, "--dataset / DATASETS.TEST[0]")
    check_device(cfg)
    check_weights_file(cfg)
    other_curves = [parse_overlay(item) for item in overlays]
    for _, other in other_curves:
        if not os.path.isfile(other):
            raise FileNotFoundError(f"--overlay {other!r}: no such file")
    cfg.freeze()
    os.makedirs(output, exist_ok=True)
    setup_logger(os.path.join(output, "log.txt"), name="crbp_d2")
    setup_logger(os.path.join(output, "log.txt"), name="detectron2", abbrev_name="d2")

    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    recurrent_mask_head(model).engine.halt_tolerance = None  # every count runs exactly its steps
    loader = build_detection_test_loader(cfg, dataset)
    sweep = sweep_onepass if mode == "onepass" else sweep_rerun
    rows = sweep(model, loader, dataset, list(steps), output, segm_ap)
    if gt_box:
        scores = evaluate_masks_on_gt_boxes(
            model,
            build_gt_box_loader(cfg, dataset),
            MetadataCatalog.get(dataset).thing_classes,
            steps=list(steps),
        )
        for row in rows:
            row[GT_BOX_COLUMNS[0]] = scores[row["steps"]]["mIoU"]
            row[GT_BOX_COLUMNS[1]] = scores[row["steps"]]["mBF"]

    csv_path = os.path.join(output, CSV_NAME)
    write_csv(rows, csv_path)
    curves = {label or os.path.splitext(os.path.basename(config_file))[0]: rows}
    for other_label, other in other_curves:
        curves[other_label] = read_csv(other)
    train_steps = cfg.MODEL.ROI_MASK_HEAD.RECURRENT.TIMESTEPS
    write_plot(
        rows, lambda _, path: plot_sweep(curves, train_steps, path), os.path.join(output, PLOT_NAME)
    )
    logger.info(
        "steps,PQ,PQ_th,PQ_st,AP_segm,gt_box_mIoU\n"
        + "\n".join(
            f"{r['steps']},{r['PQ']:.2f},{r['PQ_th']:.2f},{r['PQ_st']:.2f},"
            f"{r.get(AP_COLUMN, float('nan')):.2f},{r.get(GT_BOX_COLUMNS[0], float('nan')):.2f}"
            for r in rows
        )
    )
    logger.info(f"wrote {csv_path} and {PLOT_NAME}")
    return rows
