#!/usr/bin/env python
"""The Pathfinder CPU protocol: C-RBP, BPTT and RBP on a small PF9 variant, on 2 CPU cores.

    python tools/pathfinder_cpu_protocol.py                 # train (2 jobs side by side) + evaluate
    python tools/pathfinder_cpu_protocol.py --skip-training # evaluate existing checkpoints again

Training runs ``configs/pathfinder/cpu_protocol/{crbp,bptt,rbp}.yaml`` through
``tools/train_pathfinder.py`` as 1-thread jobs: slot 1 runs C-RBP, slot 2 runs BPTT then RBP.
Then every model's last checkpoint is evaluated on the same test images after N and 3N steps
(and every step 0..3N for the plot), next to the marker-only and flood-fill baselines of those
images. Writes ``<results>/pathfinder_cpu_protocol.json`` (a list of records: model, method,
train_length, test_length, train_steps, eval_steps, iou, ...), ``..._summary.json`` (machine,
timings, the protocol's checks, training diagnostics) and two PNGs (IoU vs steps, training).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from crbp_d2.pathfinder.analysis import (
    iou_over_steps,
    load_trained,
    plot_iou_over_steps,
    plt_agg,
)  # noqa: E402
from crbp_d2.pathfinder.baselines import flood_fill, marker_only  # noqa: E402
from crbp_d2.pathfinder.metrics import SegmentationMeter  # noqa: E402
from crbp_d2.pathfinder.trainer import atomic_write_json  # noqa: E402
from crbp_d2.pathfinder.training_data import build_dataset, marker_radius_at_input  # noqa: E402
from crbp_d2.utils import cpu_model_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs", "pathfinder", "cpu_protocol")
SLOTS = (("crbp",), ("bptt", "rbp"))
FLOOD_RADII = (1, 2, 3, 4)


def machine() -> Dict[str, object]:
    return {
        "cpu": cpu_model_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def train_slot(methods, out_dir: str, timings: Dict[str, float], extra: List[str]) -> None:
    for method in methods:
        cfg = os.path.join(CONFIG_DIR, f"{method}.yaml")
        log = os.path.join(out_dir, f"{method}.log")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [
            sys.executable,
            os.path.join(ROOT, "tools", "train_pathfinder.py"),
            "--config-file",
            cfg,
            "--no-progress",
            "OUTPUT_DIR",
            os.path.join(out_dir, method),
            *extra,
        ]
        tic = time.time()
        with open(log, "w") as f:
            code = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            ).returncode
        timings[method] = time.time() - tic
        if code != 0:
            timings[f"{method}_failed"] = float(code)


def baseline_records(dataset, radius: float, length: int) -> List[Dict[str, object]]:
    meters = {"marker_only": SegmentationMeter()}
    meters.update({f"flood_fill_k{r}": SegmentationMeter() for r in FLOOD_RADII})
    for i in range(len(dataset)):
        image, label = dataset[i]
        img = image[0].numpy()
        meters["marker_only"].update(torch.from_numpy(marker_only(img, radius))[None], label[None])
        for r in FLOOD_RADII:
            pred = flood_fill(img, r, radius)
            meters[f"flood_fill_k{r}"].update(torch.from_numpy(pred)[None], label[None])
    summaries = {k: m.summary() for k, m in meters.items()}
    best = max(FLOOD_RADII, key=lambda r: summaries[f"flood_fill_k{r}"]["iou"])
    rows = [dict(summaries["marker_only"], model="baseline", method="marker_only")]
    rows.append(
        dict(
            summaries[f"flood_fill_k{best}"],
            model="baseline",
            method="flood_fill",
            flood_fill_radius=best,
            note="best radius of 1..4 on these images (oracle)",
        )
    )
    for row in rows:
        row.update(train_length=None, test_length=length, train_steps=None, eval_steps=None)
    return rows


def last_training_row(path: str) -> Dict[str, str]:
    if not os.path.isfile(path):
        return {}
    rows = list(csv.DictReader(open(path)))
    return rows[-1] if rows else {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out-dir", default=os.path.join(ROOT, "output", "pathfinder", "cpu_protocol"))
    p.add_argument("--results", default=os.path.join(ROOT, "docs", "results"))
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--eval-threads", type=int, default=2)
    p.add_argument(
        "--report-only", action="store_true", help="only rewrite the Markdown table from the JSON"
    )
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every training job"
    )
    args = p.parse_args(argv)
    stem = os.path.join(args.results, "pathfinder_cpu_protocol")
    if args.report_only:
        write_markdown(stem)
        return 0
    os.makedirs(args.out_dir, exist_ok=True)
    timings: Dict[str, float] = {}
    tic = time.time()
    if not args.skip_training:
        threads = [
            threading.Thread(target=train_slot, args=(slot, args.out_dir, timings, args.opts))
            for slot in SLOTS
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [k for k in timings if k.endswith("_failed")]
        if failed:
            print(
                f"error: training failed for {failed}; see the logs in {args.out_dir}",
                file=sys.stderr,
            )
            return 1
    train_seconds = time.time() - tic

    torch.set_num_threads(args.eval_threads)
    eval_tic = time.time()
    records: List[Dict[str, object]] = []
    curves, train_steps, diagnostics = {}, {}, {}
    dataset = length = None
    for method in ("crbp", "bptt", "rbp"):
        path = os.path.join(args.out_dir, method, "last.pth")
        model, cfg = load_trained(path)
        n = cfg.MODEL.RECURRENT.TIMESTEPS
        if dataset is None:
            dataset = build_dataset(cfg, "test")
            length = cfg.DATA.TEST_LENGTH
            radius = marker_radius_at_input(cfg)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.TEST.BATCH_SIZE, shuffle=False)
        rows = iou_over_steps(model, loader, 3 * n)
        curves[method.upper().replace("C", "C-") if method == "crbp" else method.upper()] = rows
        train_steps[list(curves)[-1]] = n
        for t in (n, 3 * n):
            records.append(
                dict(
                    rows[t],
                    model=cfg.MODEL.ARCH,
                    method=method,
                    train_length=cfg.DATA.TRAIN_LENGTH,
                    test_length=length,
                    train_steps=n,
                    eval_steps=t,
                    checkpoint="last",
                )
            )
        last = last_training_row(os.path.join(args.out_dir, method, "train_log.csv"))
        evals = list(csv.DictReader(open(os.path.join(args.out_dir, method, "eval_log.csv"))))
        diagnostics[method] = {
            "final_train_row": last,
            "final_eval_rows": (
                [r for r in evals if r["epoch"] == evals[-1]["epoch"]] if evals else []
            ),
            "iou_per_epoch": [float(r["iou"]) for r in evals if float(r["steps"]) == n],
            "train_seconds": timings.get(method),
        }
    records += baseline_records(dataset, radius, length)
    eval_seconds = time.time() - eval_tic

    def iou(method, steps=None):
        for r in records:
            if r["method"] == method and (steps is None or r["eval_steps"] == steps):
                return float(r["iou"])
        return float("nan")

    n_c = train_steps["C-RBP"]
    n_b = train_steps["BPTT"]
    checks = {
        "crbp_minus_marker_only": iou("crbp", n_c) - iou("marker_only"),
        "crbp_learns (>= +0.10 over marker-only)": iou("crbp", n_c) - iou("marker_only") >= 0.10,
        "crbp_minus_flood_fill": iou("crbp", n_c) - iou("flood_fill"),
        "crbp_above_flood_fill": iou("crbp", n_c) > iou("flood_fill"),
        "crbp_change_N_to_3N": iou("crbp", 3 * n_c) - iou("crbp", n_c),
        "crbp_stable (|change| <= 0.02)": abs(iou("crbp", 3 * n_c) - iou("crbp", n_c)) <= 0.02,
        "bptt_change_N_to_3N": iou("bptt", 3 * n_b) - iou("bptt", n_b),
        "bptt_degrades (loss >= 0.05)": iou("bptt", n_b) - iou("bptt", 3 * n_b) >= 0.05,
    }
    os.makedirs(args.results, exist_ok=True)
    atomic_write_json(records, stem + ".json")
    summary = {
        "machine": machine(),
        "train_wall_seconds": train_seconds,
        "eval_wall_seconds": eval_seconds,
        "job_seconds": timings,
        "test_images": len(dataset),
        "checks": checks,
        "diagnostics": diagnostics,
        "configs": {
            m: f"configs/pathfinder/cpu_protocol/{m}.yaml" for m in ("crbp", "bptt", "rbp")
        },
        "overrides": args.opts,
    }
    atomic_write_json(summary, stem + "_summary.json")
    plot_iou_over_steps(
        curves,
        train_steps,
        stem + "_steps.png",
        {"marker only": iou("marker_only"), "flood fill": iou("flood_fill")},
    )
    plot_training(diagnostics, stem + "_training.png")
    write_markdown(stem)
    print(f"{'method':>12} {'N':>4} {'steps':>6} {'IoU':>7}")
    for r in records:
        print(
            f"{r['method']:>12} {str(r['train_steps']):>4} {str(r['eval_steps']):>6} {r['iou']:.4f}"
        )
    for k, v in checks.items():
        print(f"  {k}: {v if isinstance(v, bool) else round(v, 4)}")
    print(
        f"train {train_seconds / 60:.1f} min, eval {eval_seconds / 60:.1f} min; wrote {stem}.json"
    )
    return 0


def write_markdown(stem: str) -> None:
    """``stem.md``: the results table (IoU at N and 3N, baselines) with the machine."""
    records = json.load(open(stem + ".json"))
    summary = json.load(open(stem + "_summary.json"))
    by = {(r["method"], r["eval_steps"]): r for r in records}
    lines = [
        "| method | N | IoU at N | IoU at 3N | change | mean per-image IoU at N |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, label in (("crbp", "C-RBP"), ("rbp", "RBP (no LCP)"), ("bptt", "BPTT")):
        rows = sorted((r for r in records if r["method"] == method), key=lambda r: r["eval_steps"])
        if len(rows) < 2:
            continue
        at_n, at_3n = rows[0], rows[-1]
        lines.append(
            f"| {label} | {at_n['train_steps']} | {at_n['iou']:.3f} | {at_3n['iou']:.3f} | "
            f"{at_3n['iou'] - at_n['iou']:+.3f} | {at_n['mean_image_iou']:.3f} |"
        )
    for method, label in (("flood_fill", "flood fill"), ("marker_only", "marker only")):
        r = by.get((method, None))
        if r is not None:
            lines.append(
                f"| {label} (baseline) | | {r['iou']:.3f} | | | {r['mean_image_iou']:.3f} |"
            )
    m = summary["machine"]
    lines.append("")
    lines.append(
        f"PF9 (128-px canvas -> 64 px), {summary['test_images']} test images, pooled IoU. "
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; training "
        f"{summary['train_wall_seconds'] / 60:.1f} min wall (two 1-thread jobs side by side), "
        f"evaluation {summary['eval_wall_seconds'] / 60:.1f} min."
    )
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_training(diagnostics: Dict[str, dict], path: str) -> None:
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, d in diagnostics.items():
        ys = d["iou_per_epoch"]
        ax.plot(np.arange(1, len(ys) + 1), ys, "o-", label=method)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test IoU at N")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
