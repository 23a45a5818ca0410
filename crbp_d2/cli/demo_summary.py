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
from typing import Any, Dict, List, Optional, Sequence

from ..utils import (
    atomic_write_text,
    machine_record,
    markdown_table,
    write_results,
)
from ..utils.metrics_json import metrics_lines
from ._common import one_line_errors


def _load_json(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: did every demo step run?")
    with open(path) as f:
        return json.load(f)


def memory_lines(out: str) -> List[str]:
    return memory_lines_of(_load_json(os.path.join(out, "memory.json")))


def memory_lines_of(records: List[dict]) -> List[str]:
    """The summary's memory line of the memory benchmark's ``records``."""
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
    counted = "each storage once" if records[0].get("saved_counter") else "every saved reference"
    return [
        f"memory saved for backward ({counted}, MiB) at {'/'.join(map(str, steps))} steps: "
        + ", ".join(parts)
    ]


def memory_metrics(records: List[dict]) -> Dict[str, Any]:
    """method -> steps -> MiB saved for backward, and what the counter counted."""
    saved: Dict[str, Dict[str, float]] = {}
    for r in records:
        saved.setdefault(r["method"], {})[str(r["steps"])] = round(r["saved_bytes"] / 2**20, 3)
    return {"saved_mib": saved, "saved_counter": records[0].get("saved_counter", "every_reference")}


def refresh_memory(stem: str, memory_json: str) -> None:
    """Replace the memory part of the demo record ``stem.json`` (and ``stem.md``) by the memory
    benchmark's records ``memory_json`` (``make demo-memory``'s, run alone), noting where they
    came from; the other parts and the timings stay those of the recorded ``make demo``."""
    with open(stem + ".json") as f:
        record = json.load(f)[0]
    memory = _load_json(memory_json)
    lines = record["summary"].split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("memory saved for backward"))
    lines[at] = memory_lines_of(memory)[0]
    record["summary"] = "\n".join(lines)
    metrics = record.setdefault("metrics", {})
    for part, values in parse_summary(record["summary"]).items():
        metrics.setdefault(part, values)  # a record written before the metrics were fields
    metrics["memory"] = memory_metrics(memory)
    keys = ("device", "torch", "threads", "git_commit", "shared_machine")
    metrics["memory"]["measured_apart"] = {
        **{k: memory[0].get(k) for k in keys},
        "how": "make demo-memory's command run alone, not in a make demo run",
    }
    write_results(stem, [record], demo_markdown([record]))


_RFPN_NAMES = {
    "PQ": "panoptic_seg/PQ",
    "PQ things": "panoptic_seg/PQ_th",
    "PQ stuff": "panoptic_seg/PQ_st",
    "mask AP": "segm/AP",
    "box AP": "bbox/AP",
    "mask IoU on GT boxes": "gt_box/mIoU",
}


def parse_summary(text: str) -> Dict[str, Any]:
    """The Pathfinder and R-FPN numbers of a summary :func:`summary` wrote, as the fields of
    :func:`summary_metrics` (at the summary's rounding), for records written before the demo
    kept them as fields."""
    import re

    metrics: Dict[str, Any] = {}
    found = re.search(r"test IoU (.*)", text)
    if found:
        pairs = re.findall(r"(\d+) steps ([\d.]+)", found.group(1))
        curve = re.search(r"IoU vs steps: ([\d.]+) at N = (\d+), ([\d.]+) at ([\d.]+); (.*)", text)
        metrics["pathfinder"] = {"test_iou": {k: {"iou": float(v)} for k, v in pairs}}
        if curve:
            iou_n, n, iou_last, last, rest = curve.groups()
            metrics["pathfinder"]["iou_vs_steps"] = {
                n: float(iou_n),
                str(int(float(last))): float(iou_last),
            }
            metrics["pathfinder"]["baselines"] = {
                name.strip(): float(v) for name, v in re.findall(r"([\w ]+?) ([\d.]+)(?:,|$)", rest)
            }
    found = re.search(r"R-FPN C-RBP \([^)]*\): (.*)", text)
    if found:
        values = dict(re.findall(r"([A-Za-z][\w ]*?) ([\d.]+)(?:,|$)", found.group(1)))
        metrics["rfpn"] = {_RFPN_NAMES[k]: float(v) for k, v in values.items() if k in _RFPN_NAMES}
        sweep = re.search(r"PQ things vs test steps: ([\d.]+) at (\d+), ([\d.]+) at (\d+)", text)
        if sweep:
            a, first, b, last = sweep.groups()
            metrics["rfpn"]["pq_things_vs_steps"] = {first: float(a), last: float(b)}
    return metrics


def summary_metrics(out: str) -> Dict[str, Any]:
    """The numbers of the summary as fields: ``memory`` (method -> steps -> MiB saved for
    backward, and the counter), ``pathfinder`` (test IoU by steps, IoU vs steps, baselines) and
    ``rfpn`` (the final metrics, PQ things vs test steps)."""
    evaluation = _load_json(os.path.join(out, "pathfinder", "run", "eval_only.json"))["results"]
    steps = _load_json(os.path.join(out, "pathfinder", "steps.json"))
    metrics: Dict[str, Any] = {
        "memory": memory_metrics(_load_json(os.path.join(out, "memory.json"))),
        "pathfinder": {
            "test_iou": {k: {"iou": v["iou"]} for k, v in evaluation.items()},
            "iou_vs_steps": {
                str(r["steps"]): r["iou"] for r in steps if r.get("method") != "baseline"
            },
            "baselines": {r["model"]: r["iou"] for r in steps if r.get("method") == "baseline"},
        },
    }
    with open(os.path.join(out, "rfpn", "eval", "metrics.json")) as f:
        final = json.loads(f.read().strip().splitlines()[-1])
    keys = ("panoptic_seg/PQ", "panoptic_seg/PQ_th", "panoptic_seg/PQ_st", "segm/AP", "bbox/AP")
    metrics["rfpn"] = {k: final[k] for k in keys + ("gt_box/mIoU",) if k in final}
    sweep_path = os.path.join(out, "rfpn", "sweep", "timestep_sweep.csv")
    if os.path.isfile(sweep_path):
        with open(sweep_path) as f:
            metrics["rfpn"]["pq_things_vs_steps"] = {
                row["steps"]: float(row["PQ_th"]) for row in csv.DictReader(f)
            }
    return metrics


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

    records = step_seconds(out)
    steps = [r for r in records if r["step"] != "wall"]
    walls = [r["seconds"] for r in records if r["step"] == "wall"]
    total = walls[-1] if walls else sum(r["seconds"] for r in steps)
    record = {
        "steps": steps,
        "total_seconds": total,
        "total_is": "wall" if walls else "sum of steps",
        "machine": machine_record("cpu"),
        "metrics": summary_metrics(out),
        "summary": text,
    }
    write_results(stem, [record], demo_markdown([record]))


def demo_markdown(records: Sequence[dict], name: str = "demo") -> str:
    """``docs/results/demo.md`` of the demo's record: its step timings and summary."""
    record = records[0]
    steps, total = record["steps"], record["total_seconds"]
    walls = record["total_is"] == "wall"
    label = "**wall time**" if walls else "**total**"
    rows = [[r["step"], f"{r['seconds']}"] for r in steps] + [[label, f"**{total}**"]]
    lanes = " (the steps after rfpn_train run in two lanes, side by side)" if walls else ""
    machine = record["machine"]
    shared = False
    if isinstance(machine, dict):
        shared = bool(machine.get("shared_machine"))
        machine = f"{machine['device']}, torch {machine['torch']}"
    memory = record.get("metrics", {}).get("memory", {})
    old_count = ""
    if memory.get("saved_counter") != "distinct_storage":
        old_count = (
            "\n\nThe memory line is the old count (every saved reference summed: a tensor saved "
            "by several operations counted several times)."
        )
    elif memory.get("measured_apart"):
        apart = memory["measured_apart"]
        old_count = (
            f"\n\nThe memory line was measured apart from this `make demo` run ({apart['how']}; "
            f"{apart['device']}, torch {apart['torch']}); the other lines and the timings are "
            "the run's."
        )
    return (
        markdown_table(["make demo step", "seconds"], rows, align="lr")
        + f"\n\n`make demo` after set-up: {total / 60:.1f} min on {machine}{lanes}"
        + (" (a shared machine: not a clean timing)" if shared else "")
        + ".\n\n"
        + f"```\n{record['summary']}\n```"
        + old_count
        + "\n"
    )


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
