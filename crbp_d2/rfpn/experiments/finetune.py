"""Fine-tuning a fresh recurrent head on a trained feedforward Panoptic FPN vs training R-FPN from
scratch, on the same budget (the quick synthetic recipe, CPU).

For each seed, and each budget B (training steps of 2 images):

* ``fpn``: the feedforward twin ``configs/quick/FPN-synthetic.yaml`` on its own schedule (1750
  steps), trained once per seed: the checkpoint the fine-tuning starts from, and the reference;
* ``finetune``: ``configs/quick/R-FPN-CRBP-from-FPN-synthetic.yaml`` from that checkpoint: its
  4-conv mask head skipped, the recurrent head (C-RBP, 6 steps, K = 5) fresh, everything else
  frozen (``SOLVER.TRAIN_ONLY_HEAD``), B steps;
* ``scratch``: ``configs/quick/R-FPN-CRBP-synthetic.yaml`` from random init, B steps.

Both R-FPN arms use the recipe's AdamW schedule with its LR drops at 90% and 96.6% of B (1575
and 1690 of 1750). Every run is one ``crbp_d2.cli.train_net`` process (training, no evaluation;
its wall time is the run's minutes) followed by one ``--eval-only`` process on the 128 validation
images (PQ, PQ things, mask AP, box AP, and the head's mask IoU on the ground-truth boxes). Runs
go one after the other with ``threads`` OpenMP threads each; a finished run is kept
(``record.json``) and reused. Results: ``STEM.json`` (the records) and ``STEM.md``.

Run it with ``make rfpn-finetune-vs-scratch`` or
``python tools/rfpn_finetune.py --budgets 500 1750 --seeds 0``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ...utils import atomic_write_json, cpu_description, markdown_table, write_results
from ...utils.metrics_json import eval_only_results, seconds_per_iter
from ...utils.procs import run_logged

__all__ = [
    "ARMS",
    "CONFIGS",
    "FinetuneRun",
    "budget_opts",
    "finetune_runs",
    "finetune_table",
    "run_finetune_vs_scratch",
]

CONFIGS: Dict[str, str] = {
    "fpn": "configs/quick/FPN-synthetic.yaml",
    "finetune": "configs/quick/R-FPN-CRBP-from-FPN-synthetic.yaml",
    "scratch": "configs/quick/R-FPN-CRBP-synthetic.yaml",
}
ARMS = tuple(CONFIGS)
LABELS = {
    "fpn": "FPN (4-conv head), the starting checkpoint",
    "finetune": "R-FPN C-RBP head fine-tuned on the FPN (rest frozen)",
    "scratch": "R-FPN C-RBP from scratch",
}
RECIPE_STEPS = 1750  # the quick recipe's budget (the FPN arm's)


def budget_opts(steps: int) -> List[str]:
    """``SOLVER.MAX_ITER`` and the recipe's LR drops for ``steps`` (1575 and 1690 of 1750: at
    90% and 96.6%)."""
    drops = (int(0.9 * steps), int(0.966 * steps))
    if not 0 < drops[0] < drops[1] < steps:
        raise ValueError(f"a budget of {steps} steps is too short for two LR drops before its end")
    return ["SOLVER.MAX_ITER", str(steps), "SOLVER.STEPS", f"({drops[0]}, {drops[1]})"]


@dataclass(frozen=True)
class FinetuneRun:
    """One training run: ``arm`` (fpn | finetune | scratch), ``budget`` steps, ``seed``."""

    arm: str
    budget: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm}/steps{self.budget}/seed{self.seed}"

    def train_opts(self, fpn_weights: Optional[str] = None) -> List[str]:
        """Config overrides of the training run (the FPN: its config's own schedule)."""
        opts = ["SEED", str(self.seed)]
        if self.arm != "fpn":
            opts += budget_opts(self.budget)
        if self.arm == "finetune":
            if not fpn_weights:
                raise ValueError(f"{self.name}: the fine-tuning needs the FPN checkpoint")
            opts += ["MODEL.WEIGHTS", fpn_weights]
        return opts


def finetune_runs(budgets: Sequence[int], seeds: Sequence[int]) -> List[FinetuneRun]:
    """The FPN run of each seed first, then the R-FPN runs (fine-tuned, from scratch)."""
    for budget in budgets:
        budget_opts(budget)  # validates
    if not budgets or not seeds:
        raise ValueError("give at least one budget and one seed")
    runs = [FinetuneRun("fpn", RECIPE_STEPS, s) for s in seeds]
    runs += [FinetuneRun(arm, b, s) for s in seeds for b in budgets for arm in ARMS[1:]]
    return runs


def run_one(
    run: FinetuneRun,
    out_dir: str,
    threads: int = 2,
    fpn_weights: Optional[str] = None,
    configs: Optional[Mapping[str, str]] = None,
) -> Dict:
    """Train and evaluate ``run`` in ``out_dir/<arm>/steps<B>/seed<k>`` (reusing a finished
    run); returns its record. ``configs``: arm -> config file (default :data:`CONFIGS`)."""
    folder = os.path.join(out_dir, run.name)
    record_path = os.path.join(folder, "record.json")
    if os.path.isfile(record_path):
        with open(record_path) as f:
            return json.load(f)
    os.makedirs(folder, exist_ok=True)
    config = (configs or CONFIGS)[run.arm]
    program = [sys.executable, "-m", "crbp_d2.cli.train_net", "--config-file", config]
    train_seconds = run_logged(
        program
        + [
            "--overwrite",
            "OUTPUT_DIR",
            folder,
            *run.train_opts(fpn_weights),
            "DATASETS.TEST",
            "()",
        ],
        os.path.join(folder, "train.log"),
        threads,
    )["seconds"]
    weights = os.path.join(folder, "model_final.pth")
    eval_dir = os.path.join(folder, "eval")
    eval_seconds = run_logged(
        program
        + ["--eval-only", "OUTPUT_DIR", eval_dir, "MODEL.WEIGHTS", weights]
        + ["TEST.GT_BOX_MASKS", "True"],
        os.path.join(folder, "eval.log"),
        threads,
    )["seconds"]
    results = eval_only_results(os.path.join(eval_dir, "metrics.json"))
    record = {
        "arm": run.arm,
        "budget_steps": run.budget,
        "seed": run.seed,
        "start": "FPN checkpoint" if run.arm == "finetune" else "random init",
        "train_minutes": train_seconds / 60,
        "eval_minutes": eval_seconds / 60,
        "seconds_per_iter": seconds_per_iter(os.path.join(folder, "metrics.json")),
        "threads": threads,
        "pq": results["panoptic_seg/PQ"],
        "pq_things": results["panoptic_seg/PQ_th"],
        "pq_stuff": results["panoptic_seg/PQ_st"],
        "mask_ap": results["segm/AP"],
        "box_ap": results["bbox/AP"],
        "gt_box_iou": results["gt_box/mIoU"],
    }
    atomic_write_json(record, record_path)
    return record


def _fmt(values: Sequence[float], digits: int = 1) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def finetune_table(records: Sequence[Dict]) -> str:
    """One row per arm and budget (mean ± half the range over seeds): minutes of training (for
    the fine-tuned head also the FPN's own), mask AP, PQ things, PQ, box AP and the mask IoU of
    the head on the ground-truth boxes (the head alone, without detection noise)."""
    fpn_minutes = {r["seed"]: r["train_minutes"] for r in records if r["arm"] == "fpn"}
    rows = []
    for arm in ARMS:
        for budget in sorted({r["budget_steps"] for r in records if r["arm"] == arm}):
            mine = [r for r in records if r["arm"] == arm and r["budget_steps"] == budget]
            minutes = _fmt([r["train_minutes"] for r in mine])
            if arm == "finetune" and fpn_minutes:
                minutes += f" (+ {_fmt([fpn_minutes.get(r['seed']) for r in mine])} FPN)"
            rows.append(
                [
                    LABELS[arm],
                    f"{budget} x 2",
                    minutes,
                    _fmt([r["mask_ap"] for r in mine]),
                    _fmt([r["pq_things"] for r in mine]),
                    _fmt([r["pq"] for r in mine]),
                    _fmt([r["box_ap"] for r in mine]),
                    _fmt([r["gt_box_iou"] for r in mine]),
                    len(mine),
                ]
            )
    header = ["model", "steps x images", "train min", "mask AP", "PQ things", "PQ", "box AP"]
    header += ["GT-box mask IoU", "seeds"]
    return markdown_table(header, rows, align="ll" + "r" * 7)


def run_finetune_vs_scratch(
    budgets: Sequence[int] = (500, RECIPE_STEPS),
    seeds: Sequence[int] = (0,),
    out_dir: str = "output/rfpn_finetune",
    results_stem: Optional[str] = "docs/results/rfpn_finetune",
    threads: int = 2,
    fpn_weights: Optional[str] = None,
    configs: Optional[Mapping[str, str]] = None,
) -> List[Dict]:
    """Every run of :func:`finetune_runs` (with ``fpn_weights``: no FPN run, every fine-tuning
    starts from that checkpoint), then ``results_stem``.json/.md. Returns the records.
    ``configs``: arm -> config file (default :data:`CONFIGS`)."""
    runs = finetune_runs(budgets, seeds)
    if fpn_weights:
        if not os.path.isfile(fpn_weights):
            raise FileNotFoundError(f"--fpn-weights file not found: {fpn_weights}")
        runs = [r for r in runs if r.arm != "fpn"]
    start = time.time()
    records: List[Dict] = []
    for run in runs:
        weights = fpn_weights or os.path.join(
            out_dir, FinetuneRun("fpn", RECIPE_STEPS, run.seed).name, "model_final.pth"
        )
        print(f"[rfpn_finetune] {run.name} ...", flush=True)
        records.append(run_one(run, out_dir, threads, weights, configs))
    minutes = (time.time() - start) / 60
    if results_stem:
        import torch

        start_from = fpn_weights or "the FPN run of the same seed"
        note = (
            f"\n\nMeasured on {cpu_description()}, torch {torch.__version__}, one run at a time "
            f"with {threads} OpenMP thread(s), {minutes:.1f} min in all "
            "(`python tools/rfpn_finetune.py`). Set: synthetic_panoptic_large "
            "(4096 train / 128 val images of 160 px), 128 px input, R-18 FPN from random init. "
            f"The fine-tuned head starts from {start_from} (its 4-conv mask head skipped, the "
            "rest frozen: its boxes, classes and stuff are the FPN's); train min: wall time of "
            "the training process (start-up included, evaluation excluded). Mask AP and box AP: "
            "COCO AP on the val set; PQ at Detectron2's default panoptic thresholds; GT-box "
            "mask IoU: the head's masks on the ground-truth boxes and classes "
            "(`TEST.GT_BOX_MASKS`).\n"
        )
        write_results(results_stem, records, finetune_table(records) + note)
    return records
