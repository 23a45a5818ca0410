"""The short summary ``make demo`` prints at the end (and writes to ``OUT/summary.md``).

Reads what the demo steps wrote under ``OUT`` (the demo folder): the memory benchmark's records,
the Pathfinder evaluation and IoU-vs-steps records, and the R-FPN evaluation and timestep sweep.
Timings are left out, so two runs of the demo print the same summary. ``--results STEM`` also
writes the timings (``OUT/logs/seconds.txt``, one ``STEP SECONDS s`` line per step) with the
machine to ``STEM.json`` / ``STEM.md``: the README's demo block.

    python -m crbp_d2.cli.demo_summary output/demo
    python -m crbp_d2.cli.demo_summary output/demo --results docs/results/demo
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import List, Optional, Sequence

from ..utils import atomic_write_text, cpu_description, markdown_table, write_results
from ..utils.metrics_json import metrics_lines
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
    final = metrics_lines(metrics_path)[-1]
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


def step_seconds(out: str) -> List[dict]:
    """The ``{"step", "seconds"}`` records of ``OUT/logs/seconds.txt`` (``make demo`` writes it)."""
    path = os.path.join(out, "logs", "seconds.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: run make demo first")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if parts[-1:] == ["s"]:  # make demo writes "STEP SECONDS s"
                parts = parts[:-1]
            if len(parts) != 2 or not parts[1].isdigit():
                expected = "expected 'STEP SECONDS s'"
                raise ValueError(f"{path}:{number}: {expected}, got {line.strip()!r}")
            records.append({"step": parts[0], "seconds": int(parts[1])})
    return records


def write_timings(out: str, stem: str, text: str) -> None:
    """``stem.json`` (step timings, total, machine, summary) and ``stem.md`` (table + summary).

    The total is the ``wall`` record when there is one (``make demo`` runs two lanes side by side
    after the R-FPN training, so the steps' seconds add up to more than the wall time), else the
    sum of the steps."""
    import torch

    records = step_seconds(out)
    steps = [r for r in records if r["step"] != "wall"]
    walls = [r["seconds"] for r in records if r["step"] == "wall"]
    total = walls[-1] if walls else sum(r["seconds"] for r in steps)
    machine = f"{cpu_description()}, torch {torch.__version__}"
    record = {
        "steps": steps,
        "total_seconds": total,
        "total_is": "wall" if walls else "sum of steps",
        "machine": machine,
        "summary": text,
    }
    label = "**wall time**" if walls else "**total**"
    rows = [[r["step"], f"{r['seconds']}"] for r in steps] + [[label, f"**{total}**"]]
    lanes = " (the steps after rfpn_train run in two lanes, side by side)" if walls else ""
    table = (
        markdown_table(["make demo step", "seconds"], rows, align="lr")
        + f"\n\n`make demo` after set-up: {total / 60:.1f} min on {machine}{lanes}.\n\n"
        + f"```\n{text}\n```\n"
    )
    write_results(stem, [record], table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the demo's output folder (make demo's OUT)")
    parser.add_argument(
        "--results", metavar="STEM", help="also write the step timings to STEM.json / STEM.md"
    )
    args = parser.parse_args(argv)
    with one_line_errors("demo_summary"):
        text = summary(args.out)
        if args.results:
            write_timings(args.out, args.results, text)
    atomic_write_text(os.path.join(args.out, "summary.md"), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
