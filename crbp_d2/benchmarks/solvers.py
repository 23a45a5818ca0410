"""Anderson acceleration against plain iteration at a trained model's fixed point.

The question (issue "cheaper gradients and a faster fixed point"): how many cell evaluations does
Anderson need to reach the relative residual that ``steps`` plain iterations reach? For a batch
of inputs, plain iteration runs ``steps`` evaluations from the zero state and gives the target
residual ``||F(h) - h|| / ||F(h)||``; each Anderson setting (window, damping) then runs with that
target as its tolerance and a budget of ``budget_factor x steps`` evaluations. A record's
``evaluation_share`` is its evaluations / ``steps`` (below 1: Anderson is cheaper).

    python tools/benchmark_solvers.py --checkpoint RUN/last.pth --images 16 \\
        --out docs/results/anderson_cpu

The Pathfinder checkpoint is any trainer checkpoint (e.g. the CPU protocol's C-RBP run); its
test images come from its own config's data source.
"""

from __future__ import annotations

import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..recurrent.base import cell_init_state, cell_prepare
from ..recurrent.solvers import solve
from ..utils import markdown_table

__all__ = ["solver_comparison", "pathfinder_solver_comparison", "solver_table"]

Record = Dict[str, object]


@torch.no_grad()
def solver_comparison(
    cell: nn.Module,
    drive: Tensor,
    steps: int = 20,
    settings: Sequence[Tuple[int, float]] = ((3, 1.0), (5, 1.0), (5, 0.5), (8, 1.0)),
    budget_factor: int = 2,
) -> List[Record]:
    """Plain iteration for ``steps`` evaluations, then Anderson with each (window, damping) of
    ``settings`` run to the residual plain iteration reached. ``drive``: the cell's input,
    e.g. (B, C, H, W). Returns one record per solver run (the first is plain iteration)."""
    if steps < 1 or budget_factor < 1:
        raise ValueError(f"steps ({steps}) and budget_factor ({budget_factor}) must be >= 1")
    prepared = cell_prepare(cell, drive)
    start_state = cell_init_state(cell, prepared)

    def step(state):
        return cell(prepared, state)

    def run(name: str, budget: int, tol: Optional[float], window: int, damping: float) -> Record:
        tic = time.perf_counter()
        _, stats = solve(name, step, start_state, budget, tol, window=window, damping=damping)
        return {
            "solver": name,
            "window": window if name == "anderson" else None,
            "damping": damping if name == "anderson" else None,
            "budget": budget,
            "evaluations": stats.evaluations,
            "residual": stats.residual,
            "converged": stats.converged if tol is not None else None,
            "fell_back": stats.fell_back if name == "anderson" else None,
            "seconds": time.perf_counter() - tic,
        }

    plain = run("iterate", steps, None, 0, 1.0)
    target = float(plain["residual"])
    records = [plain]
    for window, damping in settings:
        records.append(run("anderson", budget_factor * steps, target, window, damping))
    for record in records:
        record["steps"] = steps
        record["target_residual"] = target
        record["evaluation_share"] = record["evaluations"] / steps
    return records


def pathfinder_solver_comparison(
    checkpoint: str, images: int = 16, steps: Optional[int] = None, seed: int = 0, **kwargs
) -> List[Record]:
    """:func:`solver_comparison` on a trained Pathfinder model's recurrence, for ``images`` test
    images of its config (``steps``: default the model's training steps)."""
    from ..pathfinder.evaluation.analysis import load_trained, make_test_loader

    torch.manual_seed(seed)
    model, cfg = load_trained(checkpoint)
    if not getattr(model, "recurrent", False):
        raise ValueError(f"{checkpoint} holds a feedforward model: no fixed point to solve for")
    image = next(iter(make_test_loader(cfg, size=images, batch_size=images)))[0]
    with torch.no_grad():
        drive = model.input_layer(image)
    n = int(steps or model.engine.steps)
    records = solver_comparison(model.engine.cell, drive, n, **kwargs)
    for record in records:
        record.update({"model": "pathfinder", "checkpoint": checkpoint, "images": images})
    return records


def solver_table(records: Sequence[Record]) -> str:
    """Markdown: one row per solver run."""
    rows = []
    for r in records:
        setting = (
            "plain iteration"
            if r["solver"] == "iterate"
            else (f"Anderson m={r['window']}, damping {r['damping']}")
        )
        rows.append(
            [
                setting,
                f"{r['evaluations']}",
                f"{r['evaluation_share']:.2f}",
                f"{r['residual']:.2e}",
                "-" if r["converged"] is None else ("yes" if r["converged"] else "no"),
                "-" if r["fell_back"] is None else ("yes" if r["fell_back"] else "no"),
                f"{r['seconds']:.2f}",
            ]
        )
    header = ["solver", "cell evaluations", "share of N", "residual", "reached", "fell back", "s"]
    return markdown_table(header, rows, align="l" + "r" * 6)


if __name__ == "__main__":  # the command before tools/benchmark_solvers.py, for one version
    from .._deprecated import run_moved_program

    sys.exit(run_moved_program(__spec__.name, "crbp_d2.cli.benchmark_solvers"))
