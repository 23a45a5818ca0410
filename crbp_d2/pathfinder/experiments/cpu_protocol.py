"""The Pathfinder CPU protocol: C-RBP, BPTT and RBP on a small PF9 variant, on 2 CPU cores.

Training runs ``configs/pathfinder/cpu_protocol/{crbp,bptt,rbp}.yaml`` through the
``train_pathfinder`` command as 1-thread jobs: slot 1 runs C-RBP, slot 2 runs BPTT then RBP.
Then every model's last checkpoint is evaluated on the same test images after N and 3N steps
(and every step 0..3N for the plot), next to the marker-only and flood-fill baselines of those
images. Writes ``RESULTS/pathfinder_cpu_protocol.json`` (a list of records: model, method,
train_length, test_length, train_steps, eval_steps, iou, ...), ``..._summary.json`` (machine,
timings, the protocol's checks, training diagnostics), ``.md`` (the table) and two PNGs (IoU vs
steps, training).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import threading
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from crbp_d2.utils.io import atomic_write_json, atomic_write_text
from crbp_d2.utils.machine import machine_record
from crbp_d2.utils.procs import run_logged
from crbp_d2.utils.report import markdown_table

from ..config import CONFIG_DIR, REPO_ROOT
from ..data.datasets import build_dataset, marker_radius_at_input
from ..evaluation.analysis import load_trained
from ..evaluation.baselines import dataset_pairs, evaluate_baselines
from ..evaluation.evaluator import METRIC_KEYS, iou_over_steps
from ..evaluation.plots import plot_iou_over_steps, plot_training

PROTOCOL_CONFIGS = CONFIG_DIR / "cpu_protocol"
STEM = "pathfinder_cpu_protocol"
METHODS = ("crbp", "bptt", "rbp")
SLOTS = (("crbp",), ("bptt", "rbp"))  # the methods each 1-thread job trains, in order
FLOOD_RADII = (1, 2, 3, 4)
# method -> its config under configs/pathfinder/cpu_protocol/ and its label
LABELS = {
    "crbp": "C-RBP",
    "rbp": "RBP (no LCP)",
    "bptt": "BPTT",
    "cjfb": "C-JFB (JFB + LCP)",
    "cphantom": "C-phantom (phantom + LCP)",
    "crbp_fast": "C-RBP fast (Anderson to 3e-3, Neumann to 1e-2)",
    "crbp_fast_tol12": "C-RBP fast (Anderson to 3e-3, Neumann to 0.12)",
}

Record = Dict[str, object]
Log = Callable[[str], None]


class TrainingFailed(RuntimeError):
    """A training job of the protocol exited with an error (its log names it)."""


def train_slot(
    methods: Sequence[str], out_dir: str, timings: Dict[str, float], overrides: Sequence[str]
) -> None:
    """Train ``methods`` one after the other, each as a 1-thread ``train_pathfinder`` process
    writing ``out_dir/METHOD/`` and its output to ``out_dir/METHOD.log``. Records each job's
    seconds in ``timings[method]`` and a failure's exit code in ``timings[method_failed]``."""
    for method in methods:
        command = [
            sys.executable,
            "-m",
            "crbp_d2.cli.train_pathfinder",
            "--config-file",
            str(PROTOCOL_CONFIGS / f"{method}.yaml"),
            "--no-progress",
            "OUTPUT_DIR",
            os.path.join(out_dir, method),
            *overrides,
        ]
        log = os.path.join(out_dir, f"{method}.log")
        done = run_logged(command, log, threads=1, cwd=str(REPO_ROOT), check=False)
        timings[method] = done["seconds"]
        if done["returncode"] != 0:
            timings[f"{method}_failed"] = float(done["returncode"])


def slots_for(methods: Sequence[str]) -> Tuple[Tuple[str, ...], ...]:
    """Two 1-thread jobs for ``methods``: the protocol's own split for its three methods, else
    alternately (the first method in the first job)."""
    unknown = [m for m in methods if m not in LABELS]
    if unknown:
        raise ValueError(f"no CPU-protocol config for {unknown}; choose from {list(LABELS)}")
    if tuple(methods) == METHODS:
        return SLOTS
    return tuple(tuple(methods[i::2]) for i in range(min(2, len(methods))))


def train_all(
    out_dir: str, overrides: Sequence[str] = (), slots: Sequence[Sequence[str]] = SLOTS
) -> Dict[str, float]:
    """Run the ``slots`` (sequences of methods) side by side; returns the seconds per job.
    Raises :class:`TrainingFailed` naming the failed methods."""
    os.makedirs(out_dir, exist_ok=True)
    timings: Dict[str, float] = {}
    threads = [
        threading.Thread(target=train_slot, args=(slot, out_dir, timings, overrides))
        for slot in slots
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [k for k in timings if k.endswith("_failed")]
    if failed:
        raise TrainingFailed(f"training failed for {failed}; see the logs in {out_dir}")
    return timings


def baseline_records(dataset, marker_radius: float, length: int) -> List[Record]:
    """Marker-only and best-radius flood-fill records on ``dataset`` (transform items), scored
    image by image like the models' per-image metrics (the paper's F1 per image)."""
    results = evaluate_baselines(
        dataset_pairs(dataset), marker_radius, FLOOD_RADII, batch_size=1, best_by="iou"
    )
    marker, best = results["marker_only"], results["flood_fill_best"]
    rows: List[Record] = [
        dict({k: marker[k] for k in METRIC_KEYS}, model="baseline", method="marker_only"),
        dict(
            {k: best[k] for k in METRIC_KEYS},
            model="baseline",
            method="flood_fill",
            flood_fill_radius=best["radius"],
            note="best radius of 1..4 on these images (oracle)",
        ),
    ]
    for row in rows:
        row.update(train_length=None, test_length=length, train_steps=None, eval_steps=None)
    return rows


def _read_csv(path: str) -> List[Dict[str, str]]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def evaluate_all(
    out_dir: str, timings: Dict[str, float], methods: Sequence[str] = METHODS
) -> Dict[str, object]:
    """Evaluate every method's ``out_dir/METHOD/last.pth`` at every step 0..3N on the test set of
    its config, and the baselines on the same images. Returns {records, curves, train_steps,
    diagnostics, test_images}."""
    records: List[Record] = []
    curves: Dict[str, List[Record]] = {}
    train_steps: Dict[str, int] = {}
    diagnostics: Dict[str, dict] = {}
    dataset = None
    for method in methods:
        model, cfg = load_trained(os.path.join(out_dir, method, "last.pth"))
        n = cfg.MODEL.RECURRENT.TIMESTEPS
        if dataset is None:
            dataset = build_dataset(cfg, "test")
            length = cfg.DATA.TEST_LENGTH
            radius = marker_radius_at_input(cfg)
        loader = DataLoader(dataset, batch_size=cfg.TEST.BATCH_SIZE, shuffle=False)
        rows = iou_over_steps(model, loader, 3 * n)
        curves[LABELS[method]], train_steps[LABELS[method]] = rows, n
        for t in (n, 3 * n):
            records.append(
                dict(
                    rows[t],
                    model=cfg.MODEL.RECURRENT.CELL,
                    method=method,
                    train_length=cfg.DATA.TRAIN_LENGTH,
                    test_length=length,
                    train_steps=n,
                    eval_steps=t,
                    checkpoint="last",
                )
            )
        train_rows = _read_csv(os.path.join(out_dir, method, "train_log.csv"))
        evals = _read_csv(os.path.join(out_dir, method, "eval_log.csv"))
        diagnostics[method] = {
            "final_train_row": train_rows[-1] if train_rows else {},
            "final_eval_rows": [r for r in evals if r["epoch"] == evals[-1]["epoch"]]
            if evals
            else [],
            "iou_per_epoch": [float(r["iou"]) for r in evals if float(r["steps"]) == n],
            "train_seconds": timings.get(method),
        }
    records += baseline_records(dataset, radius, length)
    return {
        "records": records,
        "curves": curves,
        "train_steps": train_steps,
        "diagnostics": diagnostics,
        "test_images": len(dataset),
    }


def _iou(records: List[Record], method: str, steps=None) -> float:
    for r in records:
        if r["method"] == method and (steps is None or r["eval_steps"] == steps):
            return float(r["iou"])
    return float("nan")


def protocol_checks(records: List[Record], train_steps: Dict[str, int]) -> Dict[str, object]:
    """What the protocol asks of the run: C-RBP learns (>= +0.10 IoU over marker-only at N),
    beats flood fill, stays within 0.02 from N to 3N, and BPTT loses >= 0.05 from N to 3N.
    Empty unless both C-RBP and BPTT were run."""
    if "C-RBP" not in train_steps or "BPTT" not in train_steps:
        return {}
    n_c, n_b = train_steps["C-RBP"], train_steps["BPTT"]
    crbp_n, crbp_3n = _iou(records, "crbp", n_c), _iou(records, "crbp", 3 * n_c)
    bptt_n, bptt_3n = _iou(records, "bptt", n_b), _iou(records, "bptt", 3 * n_b)
    marker, flood = _iou(records, "marker_only"), _iou(records, "flood_fill")
    return {
        "crbp_minus_marker_only": crbp_n - marker,
        "crbp_learns (>= +0.10 over marker-only)": crbp_n - marker >= 0.10,
        "crbp_minus_flood_fill": crbp_n - flood,
        "crbp_above_flood_fill": crbp_n > flood,
        "crbp_change_N_to_3N": crbp_3n - crbp_n,
        "crbp_stable (|change| <= 0.02)": abs(crbp_3n - crbp_n) <= 0.02,
        "bptt_change_N_to_3N": bptt_3n - bptt_n,
        "bptt_degrades (loss >= 0.05)": bptt_n - bptt_3n >= 0.05,
    }


def run_protocol(
    out_dir: str,
    results_dir: str,
    skip_training: bool = False,
    eval_threads: int = 2,
    overrides: Sequence[str] = (),
    log: Log = print,
    methods: Sequence[str] = METHODS,
    stem_name: str = STEM,
) -> Dict[str, object]:
    """Train (unless ``skip_training``) and evaluate ``methods`` (two 1-thread jobs, see
    :func:`slots_for`); writes ``results_dir/STEM{.json,_summary.json,.md,_steps.png,
    _training.png}`` and returns the summary. Raises :class:`TrainingFailed`."""
    slots = slots_for(methods)
    os.makedirs(out_dir, exist_ok=True)
    tic = time.time()
    timings = {} if skip_training else train_all(out_dir, overrides, slots)
    train_seconds = time.time() - tic

    torch.set_num_threads(eval_threads)
    eval_tic = time.time()
    evaluation = evaluate_all(out_dir, timings, methods)
    eval_seconds = time.time() - eval_tic
    records, train_steps = evaluation["records"], evaluation["train_steps"]
    checks = protocol_checks(records, train_steps)

    stem = os.path.join(results_dir, stem_name)
    atomic_write_json(records, stem + ".json")
    summary = {
        "machine": machine_record(),
        "train_wall_seconds": train_seconds,
        "eval_wall_seconds": eval_seconds,
        "job_seconds": timings,
        "test_images": evaluation["test_images"],
        "checks": checks,
        "diagnostics": evaluation["diagnostics"],
        "configs": {m: f"configs/pathfinder/cpu_protocol/{m}.yaml" for m in methods},
        "overrides": list(overrides),
    }
    atomic_write_json(summary, stem + "_summary.json")
    baselines = {
        "marker only": _iou(records, "marker_only"),
        "flood fill": _iou(records, "flood_fill"),
    }
    plot_iou_over_steps(evaluation["curves"], train_steps, stem + "_steps.png", baselines)
    plot_training(evaluation["diagnostics"], stem + "_training.png")
    write_markdown(stem)

    log(f"{'method':>12} {'N':>4} {'steps':>6} {'IoU':>7}")
    for r in records:
        log(
            f"{r['method']:>12} {str(r['train_steps']):>4} {str(r['eval_steps']):>6} {r['iou']:.4f}"
        )
    for k, v in checks.items():
        log(f"  {k}: {v if isinstance(v, bool) else round(v, 4)}")
    log(f"train {train_seconds / 60:.1f} min, eval {eval_seconds / 60:.1f} min; wrote {stem}.json")
    return summary


def write_markdown(stem: str) -> str:
    """``stem.md`` from ``stem.json`` and ``stem_summary.json``: the results table (IoU at N and
    3N, baselines) and the machine. Returns the text."""
    with open(stem + ".json") as f:
        records = json.load(f)
    with open(stem + "_summary.json") as f:
        summary = json.load(f)
    by = {(r["method"], r["eval_steps"]): r for r in records}
    header = ["method", "N", "IoU at N", "IoU at 3N", "change", "mean per-image IoU at N"]
    rows = []
    for method, label in LABELS.items():
        runs = sorted((r for r in records if r["method"] == method), key=lambda r: r["eval_steps"])
        if len(runs) < 2:
            continue
        at_n, at_3n = runs[0], runs[-1]
        rows.append(
            [
                label,
                at_n["train_steps"],
                f"{at_n['iou']:.3f}",
                f"{at_3n['iou']:.3f}",
                f"{at_3n['iou'] - at_n['iou']:+.3f}",
                f"{at_n['mean_image_iou']:.3f}",
            ]
        )
    for method, label in (("flood_fill", "flood fill"), ("marker_only", "marker only")):
        r = by.get((method, None))
        if r is not None:
            rows.append(
                [f"{label} (baseline)", "", f"{r['iou']:.3f}", "", "", f"{r['mean_image_iou']:.3f}"]
            )
    m = summary["machine"]
    text = (
        markdown_table(header, rows)
        + "\n\n"
        + f"PF9 (128-px canvas -> 64 px), {summary['test_images']} test images, pooled IoU. "
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; training "
        f"{summary['train_wall_seconds'] / 60:.1f} min wall (two 1-thread jobs side by side), "
        f"evaluation {summary['eval_wall_seconds'] / 60:.1f} min.\n"
    )
    atomic_write_text(stem + ".md", text)
    return text
