"""What a run of the recurrence did: residuals, the LCP, Neumann statistics, spectral radius."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from .base import State, state_like, state_norm, state_parts
from .neumann import NeumannStats


@dataclass
class RecurrenceDiagnostics:
    """What one call of the engine did. Neumann fields are filled when backward runs."""

    method: str
    steps: int  # steps actually run (fewer than asked when halting stopped early)
    residual: float  # ||h_N - h_{N-1}|| / ||h_N|| over the whole (joint) state
    lcp: Optional[float] = None  # detached penalty value (None when not computed)
    lcp_fraction_above: Optional[float] = None  # fraction of entries of u = 1^T J above lambda
    halted: bool = False  # True when the halting tolerance was reached
    neumann: NeumannStats = field(default_factory=NeumannStats)
    forward_evaluations: Optional[int] = None  # cell evaluations (without and with a graph)
    solver_residual: Optional[float] = None  # relative residual where the solver stopped
    solver_fell_back: Optional[bool] = None  # Anderson fell back to plain iteration
    converged: Optional[bool] = None  # residual at most the spec's convergence_tol
    nonfinite_step: Optional[int] = None  # first step with a non-finite state (warn mode)

    @property
    def neumann_terms(self) -> Optional[int]:
        return self.neumann.terms_used

    @property
    def cap_fired(self) -> Optional[bool]:
        return self.neumann.cap_fired

    def scalars(self) -> dict:
        """The numbers worth logging, as a flat dict of floats (missing values left out)."""
        values = {
            "steps": self.steps,
            "residual": self.residual,
            "lcp": self.lcp,
            "lcp_fraction_above": self.lcp_fraction_above,
            "forward_evaluations": self.forward_evaluations,
            "converged": None if self.converged is None else float(self.converged),
            "solver_residual": self.solver_residual,
            "solver_fell_back": None
            if self.solver_fell_back is None
            else float(self.solver_fell_back),
            **self.backward_scalars(),
        }
        return {k: float(v) for k, v in values.items() if v is not None}

    def backward_scalars(self) -> dict:
        """The numbers known only after backward (Neumann terms used, whether the cap fired)."""
        if self.neumann.terms_used is None:
            return {}
        return {
            "neumann_terms": float(self.neumann.terms_used),
            "neumann_cap_fired": float(bool(self.neumann.cap_fired)),
        }


def relative_residual(new: State, old: State) -> float:
    """||new - old|| / ||new|| over all parts (0 when both are zero)."""
    new_parts, old_parts = state_parts(new), state_parts(old)
    diff = state_norm([a.detach() - b.detach() for a, b in zip(new_parts, old_parts)])
    size = state_norm(new_parts)
    return float(diff / size) if size > 0 else float(diff)


def per_sample_max_residual(new: State, old: State) -> float:
    """The largest per-sample relative residual over the batch (dimension 0)."""
    new_parts, old_parts = state_parts(new), state_parts(old)
    diff = sum(((a - b).double().flatten(1) ** 2).sum(1) for a, b in zip(new_parts, old_parts))
    size = sum((a.double().flatten(1) ** 2).sum(1) for a in new_parts)
    ratio = torch.sqrt(diff) / torch.sqrt(size).clamp_min(torch.finfo(torch.float64).tiny)
    return float(ratio.max())


def spectral_radius(
    step: Callable[[State], State], state: State, iterations: int = 50, seed: int = 0
) -> float:
    """Power-iteration estimate of rho(dF/dh) at ``state`` for the map ``step(state) -> state``.

    Iterates v <- J^T v (same spectrum as J) with vector-Jacobian products and returns the
    geometric-mean growth rate over the second half of the iterations. Values below 1 mean the
    map is locally contractive, so the Neumann series and the iteration converge.
    """
    if iterations < 2:
        raise ValueError(f"spectral_radius needs at least 2 iterations, got {iterations}")
    parts = state_parts(state)
    with torch.enable_grad():
        leaves = state_like([p.detach().requires_grad_() for p in parts], state)
        out = state_parts(step(leaves))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in parts]
    scale = float(state_norm(v))
    v = [p / scale for p in v]
    log_growth: List[float] = []
    for _ in range(iterations):
        with torch.enable_grad():
            grads = torch.autograd.grad(
                out, state_parts(leaves), v, retain_graph=True, allow_unused=True
            )
        v = [torch.zeros_like(p) if g is None else g for p, g in zip(parts, grads)]
        norm = float(state_norm(v))
        if norm == 0.0:
            return 0.0
        log_growth.append(math.log(norm))
        v = [p / norm for p in v]
    tail = log_growth[len(log_growth) // 2 :]
    return math.exp(sum(tail) / len(tail))
