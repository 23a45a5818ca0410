"""Reading Detectron2's ``metrics.json`` (one JSON object per line, written by its
``JSONWriter``): the one reader of it, for the R-FPN experiments and the demo summary. Plain
JSON, so it needs no Detectron2 (and sits below both front-ends)."""

from __future__ import annotations

import json
from typing import Callable, Dict, List, Optional

import numpy as np


def metrics_lines(path: str) -> List[Dict]:
    """Every line of ``metrics.json`` at ``path``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def last_line(path: str, has: Callable[[Dict], bool], what: str) -> Dict:
    """The last line of ``metrics.json`` for which ``has(line)``; ``RuntimeError`` naming the file
    and ``what`` was looked for when there is none."""
    lines = [line for line in metrics_lines(path) if has(line)]
    if not lines:
        raise RuntimeError(f"{path} holds no {what}")
    return lines[-1]


def final_results(path: str) -> Dict:
    """The evaluation results of the last line that has them (``panoptic_seg/PQ``)."""
    return last_line(path, lambda line: "panoptic_seg/PQ" in line, "evaluation results")


def eval_only_results(path: str) -> Dict:
    """The results of the last ``--eval-only`` run written to ``path``."""
    return last_line(path, lambda line: bool(line.get("eval_only")), "--eval-only results")


def seconds_per_iter(path: str) -> Optional[float]:
    """Median of Detectron2's per-iteration ``time`` (data loading excluded) over the run; None
    for a run too short to have logged it (every 20 iterations)."""
    times = [line.get("time") for line in metrics_lines(path)]
    times = [t for t in times if t is not None]
    return float(np.median(times)) if times else None
