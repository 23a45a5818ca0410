"""The short summary ``make demo`` prints at the end (and writes to ``OUT/summary.md``).

Reads what the demo steps wrote under ``OUT`` (the demo folder): the memory benchmark's records,
the Pathfinder evaluation and IoU-vs-steps records, and the R-FPN evaluation and timestep sweep.
Timings are left out, so two runs of the demo print the same summary.

    python -m crbp_d2.cli.demo_summary output/demo
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import List, Optional, Sequence

from ..utils import atomic_write_text
from ._common import one_line_errors


def _load_json(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: did every demo step run?")
    with open(path) as f:
        return json.load(f)


def memory_lines(out: str) -> List[str]:
    records = _load_json(os.path.join(out, "memory.json"))
    by_method = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    steps = sorted({r["steps"] for r in records})
    parts = [
        f"{method} "
        + " / ".join(
            f"{r['saved_bytes'] / 2**20:.0f}" for r in sorted(rows, key=lambda r: r["steps"])
        )
        for method, rows in by_method.items()
    ]
    return [
        f"memory saved for backward (MiB) at {'/'.join(map(str, steps))} steps: " + ", ".join(parts)
    ]


def pathfinder_lines(out: str) -> List[str]:
    evaluation = _load_json(os.path.join(out, "pathfinder", "run", "eval_only.json"))["results"]
    records = _load_json(os.path.join(out, "pathfinder", "steps.json"))
    baselines = {r["model"]: r["iou"] for r in records if r.get("method") == "baseline"}
    model = [r for r in records if r.get("method") != "baseline"]
    trained = model[0]["train_steps"]
    at = {r["steps"]: r["iou"] for r in model}
    last = max(at)
    counts = ", ".join(f"{k} steps {v['iou']:.3f}" for k, v in evaluation.items())
    return [
        f"Pathfinder C-RBP hGRU (PF9, trained {trained} steps): test IoU {counts}",
        f"  IoU vs steps: {at[trained]:.3f} at N = {trained}, {at[last]:.3f} at {last}; "
        + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items()),
    ]


def rfpn_lines(out: str) -> List[str]:
    metrics_path = os.path.join(out, "rfpn", "eval", "metrics.json")
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f"{metrics_path} is missing: did the R-FPN evaluation run?")
    with open(metrics_path) as f:
        final = json.loads(f.read().strip().splitlines()[-1])
    lines = [
        "R-FPN C-RBP (synthetic shapes, from random init): "
        f"PQ {final['panoptic_seg/PQ']:.1f}, PQ things {final['panoptic_seg/PQ_th']:.1f}, "
        f"PQ stuff {final['panoptic_seg/PQ_st']:.1f}, mask AP {final['segm/AP']:.1f}, "
        f"box AP {final['bbox/AP']:.1f}"
        + (f", mask IoU on GT boxes {final['gt_box/mIoU']:.1f}" if "gt_box/mIoU" in final else "")
    ]
    sweep_path = os.path.join(out, "rfpn", "sweep", "timestep_sweep.csv")
    if os.path.isfile(sweep_path):
        with open(sweep_path) as f:
            rows = list(csv.DictReader(f))
        first, last = rows[0], rows[-1]
        lines.append(
            f"  PQ things vs test steps: {float(first['PQ_th']):.1f} at {first['steps']}, "
            f"{float(last['PQ_th']):.1f} at {last['steps']}"
        )
    return lines


def summary(out: str) -> str:
    """The summary text of the demo folder ``out``."""
    lines = ["demo summary (details and logs under " + out + "):"]
    lines += memory_lines(out) + pathfinder_lines(out) + rfpn_lines(out)
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the demo's output folder (make demo's OUT)")
    args = parser.parse_args(argv)
    with one_line_errors("demo_summary"):
        text = summary(args.out)
    atomic_write_text(os.path.join(args.out, "summary.md"), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
