"""Forward solvers for the steps the engine takes without a graph: plain iteration and Anderson
acceleration, both stopping on a relative-residual tolerance within a step budget.

A solver maps ``(step, h0, budget)`` to the state it reached and a :class:`SolverStats`.
``step`` is one cell evaluation ``h -> F(x, h)``; ``budget`` is the largest number of cell
evaluations it may spend. Tuple states (the convLSTM's (h, c)) are handled jointly.

Anderson acceleration (type II, as in Walker & Ni 2011 and the DEQ solvers) keeps the last
``window`` iterates and residuals and extrapolates the next iterate from the combination of
them whose residual is smallest (a small regularised least-squares problem per sample), damped by
``damping``. When an accelerated step makes the residual grow past the best one seen by
``FALLBACK_GROWTH`` times, it falls back to plain iteration from the best iterate for the rest
of the budget (``SolverStats.fell_back``). Residuals at the rounding floor of the state's dtype
are not growth (``NOISE_FLOOR`` machine epsilons), and a residual of exactly 0 ends the solve
(converged) whatever the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .base import State, state_like, state_parts
from .diagnostics import relative_residual

SOLVERS = ("iterate", "anderson")
FALLBACK_GROWTH = 10.0  # Anderson falls back to iteration once its residual exceeds best x this
NOISE_FLOOR = 100.0  # residuals below this many machine epsilons of the dtype are rounding noise
_REGULARISATION = 1e-4  # ridge term of the Anderson least squares (relative to its scale)

Step = Callable[[State], State]
OnEvaluation = Optional[Callable[[State], None]]


@dataclass
class SolverStats:
    """What a forward solve did."""

    solver: str
    evaluations: int = 0  # cell evaluations spent
    residual: float = float("nan")  # relative residual ||F(h) - h|| / ||F(h)|| at the end
    converged: bool = False  # reached the tolerance within the budget
    fell_back: bool = False  # Anderson switched to plain iteration
    trace: List[float] = field(default_factory=list)  # residual after each evaluation


def _flatten(state: State) -> Tensor:
    """(B, D) float tensor of all parts of a state, per sample."""
    return torch.cat([p.flatten(1) for p in state_parts(state)], dim=1)  # also for 0 rows


def _unflatten(flat: Tensor, template: State) -> State:
    parts, start = [], 0
    for p in state_parts(template):
        size = p.shape[1:].numel()  # also for 0 rows
        parts.append(flat[:, start : start + size].reshape(p.shape).to(p.dtype))
        start += size
    return state_like(parts, template)


@torch.no_grad()
def iterate(
    step: Step,
    state: State,
    budget: int,
    tol: Optional[float] = None,
    on_evaluation: OnEvaluation = None,
) -> Tuple[State, SolverStats]:
    """Plain fixed-point iteration h <- F(h): at most ``budget`` evaluations, stopping once the
    relative residual is at most ``tol``; ``on_evaluation(F(h))`` sees every new state.
    Returns (state, SolverStats)."""
    stats = SolverStats("iterate")
    for k in range(budget):
        new = step(state)
        stats.evaluations += 1
        if on_evaluation is not None:
            on_evaluation(new)
        if tol is not None or k == budget - 1:  # the residual costs two norms of the state
            stats.residual = relative_residual(new, state)
            stats.trace.append(stats.residual)
        state = new
        if tol is not None and stats.residual <= tol:
            stats.converged = True
            break
    return state, stats


@torch.no_grad()
def anderson(
    step: Step,
    state: State,
    budget: int,
    tol: Optional[float] = None,
    window: int = 5,
    damping: float = 1.0,
    on_evaluation: OnEvaluation = None,
) -> Tuple[State, SolverStats]:
    """Anderson-accelerated fixed-point iteration; see the module docstring.

    Args:
        budget: cell evaluations allowed (>= 1).
        tol: stop once the relative residual ||F(h) - h|| / ||F(h)|| is at most this.
        window: m >= 1, iterates kept for the extrapolation (m = 1 is damped iteration).
        damping: beta in (0, 1]: next = beta * sum(a F(h)) + (1 - beta) * sum(a h).

    Returns:
        (F(h) of the iterate h with the smallest residual, SolverStats with that residual).
    """
    stats = SolverStats("anderson")
    if budget < 1:
        return state, stats
    template = state
    x = _flatten(state)
    xs: List[Tensor] = []  # iterates h_k
    fs: List[Tensor] = []  # F(h_k)
    best_residual, best_f = float("inf"), x
    floor = NOISE_FLOOR * torch.finfo(x.dtype).eps if x.is_floating_point() else 0.0
    while stats.evaluations < budget:
        f_state = step(_unflatten(x, template))
        if on_evaluation is not None:
            on_evaluation(f_state)
        f = _flatten(f_state)
        stats.evaluations += 1
        residual = float((f - x).double().norm() / f.double().norm().clamp_min(1e-30))
        stats.trace.append(residual)
        if residual < best_residual:
            best_residual, best_f = residual, f
        stats.residual = best_residual
        if (tol is not None and residual <= tol) or residual == 0.0:
            stats.converged = True  # a residual of exactly 0 is a fixed point whatever the tol
            break
        if residual > FALLBACK_GROWTH * max(best_residual, floor):
            stats.fell_back = True
            remaining = budget - stats.evaluations
            state, tail = iterate(step, _unflatten(best_f, template), remaining, tol, on_evaluation)
            stats.evaluations += tail.evaluations
            stats.trace += tail.trace
            if tail.evaluations:
                stats.residual = tail.residual
            stats.converged = tail.converged
            return state, stats
        xs.append(x)
        fs.append(f)
        xs, fs = xs[-window:], fs[-window:]
        x = _extrapolate(torch.stack(xs, 1), torch.stack(fs, 1), damping)
    return _unflatten(best_f, template), stats


def _extrapolate(xs: Tensor, fs: Tensor, damping: float) -> Tensor:
    """Per sample, the affine combination of the kept iterates with the smallest residual.

    xs, fs: (B, n, D). Minimises ||sum_i a_i g_i|| subject to sum_i a_i = 1, g = F(h) - h, with
    a ridge term; returns (B, D) the damped combination.
    """
    n = xs.shape[1]
    if n == 1:
        return damping * fs[:, 0] + (1 - damping) * xs[:, 0]
    g = (fs - xs).double()
    gram = g @ g.transpose(1, 2)  # (B, n, n), small: solved in float64
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    gram = gram + _REGULARISATION * scale[:, None, None] * eye
    weights = torch.linalg.solve(gram, torch.ones_like(gram[:, :, :1]))  # (B, n, 1)
    alpha = (weights / weights.sum(1, keepdim=True)).transpose(1, 2).to(xs.dtype)  # (B, 1, n)
    return damping * (alpha @ fs)[:, 0] + (1 - damping) * (alpha @ xs)[:, 0]


def solve(
    name: str,
    step: Step,
    state: State,
    budget: int,
    tol: Optional[float] = None,
    window: int = 5,
    damping: float = 1.0,
    on_evaluation: OnEvaluation = None,
) -> Tuple[State, SolverStats]:
    """Run the named solver (``iterate`` or ``anderson``)."""
    if name == "iterate":
        return iterate(step, state, budget, tol, on_evaluation)
    if name == "anderson":
        return anderson(step, state, budget, tol, window, damping, on_evaluation)
    raise ValueError(f"unknown solver {name!r}; choose one of {SOLVERS}")
