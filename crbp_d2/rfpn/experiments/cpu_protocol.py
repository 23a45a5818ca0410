"""The R-FPN CPU protocol: feedforward vs recurrent mask heads on the embedded data.

For each dataset (``contours``: crossing contours where the mask head has to trace; ``shapes``)
and each head -- the feedforward 4-conv head (``fpn``), R-FPN trained with BPTT through 3 steps
(``bptt``), with RBP at N steps and no LCP (``rbp``), and with C-RBP at N steps (``crbp``) -- and
each seed, one run:

1. trains the dataset's quick config with that head on one schedule for all runs
   (``crbp_d2.cli.train_net`` in its own process, one torch thread; its peak RSS and s/iter are
   recorded) and evaluates it: PQ, PQ things, mask AP and the head's masks on ground-truth boxes
   (``TEST.GT_BOX_MASKS``);
2. for a recurrent head, sweeps the test steps 1..3N (``crbp_d2.cli.timestep_sweep --segm-ap
   --gt-box``, one pass).

Runs go ``jobs`` at a time (two 1-thread jobs on a 2-core machine); a finished run is kept
(``record.json`` in its folder) and reused when the protocol is run again. The records go to
``STEM.json`` (a list: ``dataset``, ``head``, ``seed``, ``train_steps``, ``eval_steps``,
``gt_box_iou``, ``gt_box_bf``, ``mask_ap``, ``pq_things``, ``pq``, ``head_params``,
``seconds_per_iter``, ``peak_rss_mib``, ...), ``STEM.md`` (mean and spread over seeds) and
``STEM.png`` (GT-box mask IoU and PQ things against the test steps).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ...utils import (
    atomic_write_json,
    cpu_description,
    machine_record,
    markdown_table,
    pyplot,
    write_results,
)
from ...utils.metrics_json import final_results, seconds_per_iter
from ...utils.procs import run_logged

__all__ = ["HEADS", "DATASET_CONFIGS", "ProtocolRun", "protocol_runs", "run_protocol"]

DATASET_CONFIGS: Dict[str, str] = {
    "contours": "configs/quick/R-FPN-CRBP-contours.yaml",
    "shapes": "configs/quick/R-FPN-CRBP-synthetic.yaml",
}
HEADS = ("fpn", "bptt", "rbp", "crbp")
HEAD_LABELS = {
    "fpn": "FPN (4-conv head)",
    "bptt": "R-FPN BPTT-3",
    "rbp": "R-FPN RBP-{n} (no LCP)",
    "crbp": "R-FPN C-RBP-{n}",
}
BPTT_STEPS = 3
_RECURRENT = "MODEL.ROI_MASK_HEAD.RECURRENT."


@dataclass(frozen=True)
class ProtocolRun:
    """One training run of the protocol."""

    dataset: str
    head: str
    seed: int
    steps: int  # N of the rbp / crbp heads

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.head}/seed{self.seed}"

    @property
    def train_steps(self) -> int:
        """Recurrent steps in training (0 for the feedforward head)."""
        return {"fpn": 0, "bptt": BPTT_STEPS}.get(self.head, self.steps)

    def head_opts(self) -> List[str]:
        """Config overrides that select the head."""
        if self.head == "fpn":
            return ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]
        opts = ["MODEL.ROI_MASK_HEAD.NAME", "RecurrentMaskHead"]
        opts += [_RECURRENT + "METHOD", self.head, _RECURRENT + "TIMESTEPS", str(self.train_steps)]
        if self.head != "crbp":
            opts += [_RECURRENT + "LCP_WEIGHT", "0.0"]
        return opts


def protocol_runs(
    datasets: Sequence[str], heads: Sequence[str], seeds: Sequence[int], steps: int
) -> List[ProtocolRun]:
    """Every (dataset, head, seed), the slowest heads first (so two jobs finish together)."""
    for name, choices, given in (("dataset", DATASET_CONFIGS, datasets), ("head", HEADS, heads)):
        unknown = [g for g in given if g not in choices]
        if unknown:
            raise ValueError(f"unknown {name}(s) {unknown}; choose from {list(choices)}")
    if steps < 1:
        raise ValueError(f"the recurrent steps N must be >= 1, got {steps}")
    cost = {"crbp": 0, "rbp": 1, "bptt": 2, "fpn": 3}
    runs = [ProtocolRun(d, h, s, steps) for d in datasets for h in heads for s in seeds]
    return sorted(runs, key=lambda r: (cost[r.head], r.seed, r.dataset))


def _head_params(checkpoint: str) -> int:
    from ...utils.safe_load import load_torch_file

    state = load_torch_file(checkpoint, map_location="cpu")["model"]
    return int(sum(v.numel() for k, v in state.items() if k.startswith("roi_heads.mask_head.")))


def run_one(
    run: ProtocolRun,
    out_dir: str,
    schedule_opts: Sequence[str] = (),
    configs: Optional[Mapping[str, str]] = None,
) -> List[Dict]:
    """Train and evaluate ``run`` in ``out_dir/<dataset>/<head>/seed<k>`` (reusing a finished
    run, and a finished training whose evaluation did not end: ``train.json`` beside its
    ``model_final.pth``); returns its records (one per evaluated step count)."""
    folder = os.path.join(out_dir, run.name)
    record_path = os.path.join(folder, "record.json")
    if os.path.isfile(record_path):
        with open(record_path) as f:
            return json.load(f)
    os.makedirs(folder, exist_ok=True)
    config = os.path.abspath((configs or DATASET_CONFIGS)[run.dataset])
    python = [sys.executable, "-m"]
    opts = [*run.head_opts(), "SEED", str(run.seed)]
    weights = os.path.join(folder, "model_final.pth")
    train_path = os.path.join(folder, "train.json")
    if os.path.isfile(train_path) and os.path.isfile(weights):
        with open(train_path) as f:
            train = json.load(f)
    else:
        train = run_logged(
            python + ["crbp_d2.cli.train_net", "--config-file", config, "--overwrite"]
            + ["OUTPUT_DIR", folder, *opts, "TEST.GT_BOX_MASKS", "True", *schedule_opts],
            os.path.join(folder, "train.log"),
        )  # fmt: skip
        train = {"seconds": train["seconds"], "peak_rss_mib": train["peak_rss_mib"]}
        atomic_write_json(train, train_path)
    metrics_path = os.path.join(folder, "metrics.json")
    final = final_results(metrics_path)
    base = {
        "dataset": run.dataset,
        "head": run.head,
        "seed": run.seed,
        "train_steps": run.train_steps,
        "head_params": _head_params(weights),
        "seconds_per_iter": seconds_per_iter(metrics_path),
        **machine_record("cpu"),
        "peak_rss_mib": train["peak_rss_mib"],
        "train_minutes": train["seconds"] / 60,
        **({"train_note": train["note"]} if train.get("note") else {}),
    }
    at_train_steps = {
        "gt_box_iou": final["gt_box/mIoU"],
        "gt_box_bf": final["gt_box/mBF"],
        "mask_ap": final["segm/AP"],
        "pq_things": final["panoptic_seg/PQ_th"],
        "pq": final["panoptic_seg/PQ"],
    }
    records = [dict(base, eval_steps=run.train_steps or None, **at_train_steps)]
    if run.head != "fpn":
        sweep_dir = os.path.join(folder, "sweep")
        top = 3 * run.train_steps
        run_logged(
            python + ["crbp_d2.cli.timestep_sweep", "--config-file", config, "--output", sweep_dir]
            + ["--steps", f"1-{top}", "--segm-ap", "--gt-box", "MODEL.WEIGHTS", weights, *opts]
            + list(schedule_opts),
            os.path.join(folder, "sweep.log"),
        )  # fmt: skip
        records = []
        with open(os.path.join(sweep_dir, "timestep_sweep.csv")) as f:
            for row in csv.DictReader(f):
                records.append(
                    dict(
                        base,
                        eval_steps=int(row["steps"]),
                        gt_box_iou=float(row["gt_box_mIoU"]),
                        gt_box_bf=float(row["gt_box_mBF"]),
                        mask_ap=float(row["AP_segm"]),
                        pq_things=float(row["PQ_th"]),
                        pq=float(row["PQ"]),
                    )
                )
    atomic_write_json(records, record_path)
    return records


def _peak_rss(records: Sequence[Mapping]) -> str:
    """The mean peak RSS (MiB) of the runs that measured it ("n/a" where none did; a training
    kept from an interrupted protocol run has none)."""
    known = [r["peak_rss_mib"] for r in records if r.get("peak_rss_mib") is not None]
    if not known:
        return "n/a"
    return f"{np.mean(known):,.0f}" + ("" if len(known) == len(records) else "*")


def run_protocol(
    runs: Sequence[ProtocolRun],
    out_dir: str,
    results_stem: Optional[str],
    schedule_opts: Sequence[str] = (),
    jobs: int = 2,
    configs: Optional[Mapping[str, str]] = None,
    progress: bool = True,
) -> List[Dict]:
    """Run every run (``jobs`` at a time; ``configs``: dataset -> config file, default
    :data:`DATASET_CONFIGS`), then write the results (if ``results_stem``)."""
    from tqdm import tqdm

    records: List[Dict] = []
    start = time.time()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_one, r, out_dir, schedule_opts, configs) for r in runs]
        for future in tqdm(futures, desc="R-FPN protocol", unit="run", disable=not progress):
            records += future.result()
    minutes = (time.time() - start) / 60
    if results_stem:
        write_protocol_results(records, results_stem, schedule_opts, jobs, minutes)
    return records


# -- the report --------------------------------------------------------------------------------


def _at(records: Sequence[Mapping], steps: Optional[int]) -> List[Mapping]:
    return [r for r in records if r["eval_steps"] == steps]


def _mean_spread(values: Sequence[Optional[float]], digits: int = 1) -> str:
    """``mean ± half the range`` over seeds ("-" when there is no value)."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    half_range = (max(values) - min(values)) / 2
    return f"{np.mean(values):.{digits}f} ± {half_range:.{digits}f}"


def _timing(records: Sequence[Mapping]) -> str:
    """s/iter over the seeds: the mean ± half the range of the runs that ran alone; a run marked
    ``shared_machine`` is left out of the mean (shown apart, with *), and when the runs differ by
    more than 20% with no such mark (records from before the mark), each run is shown, not a mean
    (one of them was contended: not comparable)."""
    timed = [r for r in records if r.get("seconds_per_iter") is not None]
    alone = [r["seconds_per_iter"] for r in timed if not r.get("shared_machine")]
    shared = [r["seconds_per_iter"] for r in timed if r.get("shared_machine")]
    marked = "".join(f" ({v:.2f}*)" for v in shared)
    if not alone:
        return marked.strip() or "-"
    if len(alone) > 1 and (max(alone) - min(alone)) > 0.2 * min(alone):
        return " / ".join(f"{v:.2f}" for v in alone) + " (differ: contended?)" + marked
    return _mean_spread(alone, digits=2) + marked


def protocol_table(records: Sequence[Mapping]) -> str:
    """One row per dataset and head: the values at the training steps (FPN: its only values),
    the GT-box IoU at 3N and its change from N, the cost columns."""
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        for head in HEADS:
            mine = [r for r in records if r["dataset"] == dataset and r["head"] == head]
            if not mine:
                continue
            n = mine[0]["train_steps"]
            at_n = _at(mine, n or None)
            at_3n = _at(mine, 3 * n) if n else []
            seeds = sorted({r["seed"] for r in mine})
            change = "-"
            if at_3n:
                by_seed = {r["seed"]: r["gt_box_iou"] for r in at_n}
                change = _mean_spread([r["gt_box_iou"] - by_seed[r["seed"]] for r in at_3n])
            rows.append(
                [
                    dataset,
                    HEAD_LABELS[head].format(n=n),
                    f"{mine[0]['head_params']:,}",
                    _mean_spread([r["gt_box_iou"] for r in at_n]),
                    _mean_spread([r["gt_box_iou"] for r in at_3n]) if at_3n else "-",
                    change,
                    _mean_spread([r["mask_ap"] for r in at_n]),
                    _mean_spread([r["pq_things"] for r in at_n]),
                    _mean_spread([r["pq"] for r in at_n]),
                    _timing(at_n),
                    _peak_rss(at_n),
                    len(seeds),
                ]
            )
    header = [
        "dataset",
        "head",
        "mask-head params",
        "GT-box mask IoU at N",
        "at 3N",
        "3N - N",
        "mask AP",
        "PQ things",
        "PQ",
        "s/iter (runs alone)",
        "peak RSS (MiB)",
        "seeds",
    ]
    return markdown_table(header, rows, align="ll" + "r" * 10)


def plot_protocol(records: List[Mapping], path: str) -> None:
    """Per dataset: GT-box mask IoU and PQ things against the test steps (mean over seeds), the
    feedforward head as a horizontal line."""
    plt = pyplot()
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 7), squeeze=False)
    colors = {"fpn": "black", "bptt": "tab:red", "rbp": "tab:orange", "crbp": "tab:blue"}
    for column, dataset in enumerate(datasets):
        for row, (key, title) in enumerate(
            (("gt_box_iou", "mask IoU on GT boxes"), ("pq_things", "PQ things"))
        ):
            ax = axes[row][column]
            for head in HEADS:
                mine = [r for r in records if r["dataset"] == dataset and r["head"] == head]
                if not mine:
                    continue
                n = mine[0]["train_steps"]
                label = HEAD_LABELS[head].format(n=n)
                if head == "fpn":
                    ax.axhline(
                        np.mean([r[key] for r in mine]), color=colors[head], ls="--", label=label
                    )
                    continue
                steps = sorted({r["eval_steps"] for r in mine})
                means = [np.mean([r[key] for r in _at(mine, s)]) for s in steps]
                ax.plot(steps, means, "o-", ms=3, color=colors[head], label=label)
                ax.axvline(n, color=colors[head], lw=0.6, ls=":")
            ax.set_title(f"{dataset}: {title}")
            ax.set_xlabel("recurrent steps at test time")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def write_protocol_results(
    records: List[Dict],
    stem: str,
    schedule_opts: Sequence[str] = (),
    jobs: int = 2,
    minutes: Optional[float] = None,
) -> Dict[str, str]:
    """``stem.json`` (the records), ``stem.md`` (table + machine) and ``stem.png``."""
    import torch

    took = f", {minutes:.1f} min in all" if minutes is not None else ""
    schedule = " ".join(schedule_opts) or "the configs' own"
    note = (
        f"\n\nMeasured on {cpu_description()} with torch {torch.__version__}, {jobs} one-thread "
        f"runs side by side{took}; schedule: {schedule}. Mean ± half the range over the seeds; "
        "GT-box mask IoU: the head's masks on the ground-truth boxes and classes "
        "(`crbp_d2.rfpn.evaluation.gt_box`); s/iter: Detectron2's per-iteration time; peak RSS of "
        "the training process (`tools/rfpn_cpu_protocol.py`). s/iter: the mean of the runs that "
        "ran alone; runs on a shared machine (*) are kept out of it; runs that differ by more "
        "than 20% are shown one by one. Peak RSS: the mean of the runs that measured it (*: "
        "not all did; n/a: none did).\n"
    )
    return write_results(stem, records, protocol_table(records) + note, plot_protocol)
