"""One engine that runs any recurrent cell for N steps and trains it with a chosen method.

Methods (one switch everywhere):

- ``bptt``: unroll N steps with the full graph (memory linear in N).
- ``tbptt``: N - k steps without a graph, then k tracked steps.
- ``rbp``: N - 1 steps without a graph, one tracked step from the detached state h_{N-1}, and
  the truncated Neumann series in backward (memory constant in N).
- ``cbptt`` / ``crbp``: the same as ``bptt`` / ``rbp`` plus the Lipschitz Coefficient Penalty,
  computed with ``create_graph=True`` so that it trains the cell towards a contraction.

When autograd is off (``torch.no_grad`` / inference) the engine only iterates, optionally halting
once the relative residual falls under a tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .base import RecurrentCell, State, state_like, state_norm, state_parts
from .lcp import LCP_REDUCTIONS, check_lcp_lambda, lipschitz_penalty
from .neumann import NORM_CAPS, NeumannStats, rbp_attach

METHODS = ("bptt", "tbptt", "rbp", "cbptt", "crbp")


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
            "neumann_terms": self.neumann.terms_used,
            "neumann_cap_fired": None if self.neumann.cap_fired is None else float(self.cap_fired),
        }
        return {k: float(v) for k, v in values.items() if v is not None}


@dataclass
class RecurrenceOutput:
    """Result of :meth:`RecurrentEngine.forward`.

    Attributes:
        state: the final state h_N (a tensor, or a tuple for cells like the convLSTM), carrying
            the gradient of the chosen method.
        lcp: the penalty (0-d tensor; differentiable for cbptt/crbp), or None when not computed.
        diagnostics: see :class:`RecurrenceDiagnostics`.
        states: every state h_1..h_N, detached, when ``record_states=True`` (else None).
    """

    state: State
    lcp: Optional[Tensor]
    diagnostics: RecurrenceDiagnostics
    states: Optional[List[State]] = None


def _detach(state: State) -> State:
    return state_like([p.detach() for p in state_parts(state)], state)


def relative_residual(new: State, old: State) -> float:
    """||new - old|| / ||new|| over all parts (0 when both are zero)."""
    new_parts, old_parts = state_parts(new), state_parts(old)
    diff = state_norm([a.detach() - b.detach() for a, b in zip(new_parts, old_parts)])
    size = state_norm(new_parts)
    return float(diff / size) if size > 0 else float(diff)


class RecurrentEngine(nn.Module):
    """Runs ``cell`` for N steps on a fixed drive from h0 = 0 and applies a learning method.

    Args:
        cell: a :class:`RecurrentCell` (any module with ``prepare``/``init_state``/``output`` and
            ``forward(drive, state) -> state``).
        steps: N, the number of steps in training.
        test_steps: steps when the engine is in eval mode (default: ``steps``).
        method: one of ``bptt | tbptt | rbp | cbptt | crbp``.
        neumann_steps: K, the number of vector-Jacobian products of the RBP backward (>= 1).
        norm_cap: ``none | pathfinder | detectron2``, see :func:`neumann_series`.
        cap_threshold: absolute norm bound of the cap (the authors use 1.0).
        tbptt_steps: k, steps tracked by ``tbptt`` (default: half of N, rounded up).
        lcp_lambda: lambda of the LCP hinge, in [0, 1).
        lcp_reduction: ``mean`` (Pathfinder code) or ``sum`` (Detectron2 code).
        monitor_lcp: also compute the LCP (detached, for logging) under bptt/tbptt/rbp.
        halt_tolerance: at inference, stop once the relative residual is below this (None: never).
    """

    def __init__(
        self,
        cell: RecurrentCell,
        steps: int,
        method: str = "crbp",
        test_steps: Optional[int] = None,
        neumann_steps: int = 15,
        norm_cap: str = "none",
        cap_threshold: float = 1.0,
        tbptt_steps: Optional[int] = None,
        lcp_lambda: float = 0.9,
        lcp_reduction: str = "mean",
        monitor_lcp: bool = False,
        halt_tolerance: Optional[float] = None,
    ) -> None:
        super().__init__()
        check_steps(steps, "steps")
        if test_steps is not None:
            check_steps(test_steps, "test_steps")
        if method not in METHODS:
            raise ValueError(f"unknown learning method {method!r}; choose one of {METHODS}")
        if neumann_steps < 1:
            raise ValueError(f"neumann_steps (K) must be >= 1, got {neumann_steps}")
        if norm_cap not in NORM_CAPS:
            raise ValueError(f"unknown norm_cap {norm_cap!r}; choose one of {NORM_CAPS}")
        check_lcp_lambda(lcp_lambda)
        if lcp_reduction not in LCP_REDUCTIONS:
            raise ValueError(
                f"unknown lcp_reduction {lcp_reduction!r}; choose one of {LCP_REDUCTIONS}"
            )
        if tbptt_steps is not None and tbptt_steps < 1:
            raise ValueError(f"tbptt_steps must be >= 1, got {tbptt_steps}")
        if halt_tolerance is not None and halt_tolerance <= 0:
            raise ValueError(f"halt_tolerance must be > 0, got {halt_tolerance}")
        self.cell = cell
        self.steps = steps
        self.test_steps = test_steps if test_steps is not None else steps
        self.method = method
        self.neumann_steps = neumann_steps
        self.norm_cap = norm_cap
        self.cap_threshold = cap_threshold
        self.tbptt_steps = tbptt_steps
        self.lcp_lambda = lcp_lambda
        self.lcp_reduction = lcp_reduction
        self.monitor_lcp = monitor_lcp
        self.halt_tolerance = halt_tolerance

    @property
    def uses_lcp(self) -> bool:
        return self.method in ("cbptt", "crbp")

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, steps={self.steps}, test_steps={self.test_steps}, "
            f"neumann_steps={self.neumann_steps}, norm_cap={self.norm_cap}, "
            f"lcp_lambda={self.lcp_lambda}, lcp_reduction={self.lcp_reduction}"
        )

    def forward(
        self,
        x: Tensor,
        steps: Optional[int] = None,
        record_states: bool = False,
        halt_tolerance: Optional[float] = None,
    ) -> RecurrenceOutput:
        """Run the recurrence on input ``x`` (B, C_in, H, W).

        Args:
            steps: override N for this call (default: ``steps`` in train mode, ``test_steps`` in
                eval mode).
            record_states: also return every state h_1..h_N (detached; the gradient is unchanged).
            halt_tolerance: override the inference halting tolerance for this call.
        """
        n = steps if steps is not None else (self.steps if self.training else self.test_steps)
        check_steps(n, "steps")
        drive = self.cell.prepare(x)
        recorder: Optional[List[State]] = [] if record_states else None
        if not torch.is_grad_enabled():
            tol = halt_tolerance if halt_tolerance is not None else self.halt_tolerance
            return self._iterate(drive, n, tol, recorder)
        if self.method in ("bptt", "cbptt"):
            return self._unrolled(drive, n, n, recorder)
        if self.method == "tbptt":
            k = self.tbptt_steps if self.tbptt_steps is not None else (n + 1) // 2
            return self._unrolled(drive, n, min(k, n), recorder)
        return self._rbp(drive, n, recorder)

    # -- the three ways of running -------------------------------------------------------------

    def _iterate(
        self, drive: Tensor, n: int, tol: Optional[float], recorder: Optional[List[State]]
    ) -> RecurrenceOutput:
        state = self.cell.init_state(drive)
        previous, residual, halted, t = state, float("inf"), False, 0
        for t in range(1, n + 1):
            previous, state = state, self.cell(drive, state)
            _record(recorder, state)
            residual = relative_residual(state, previous)
            if tol is not None and _per_sample_max_residual(state, previous) < tol:
                halted = True
                break
        diag = RecurrenceDiagnostics(self.method, t, residual, halted=halted)
        return RecurrenceOutput(state, None, diag, recorder)

    def _unrolled(
        self, drive: Tensor, n: int, tracked: int, recorder: Optional[List[State]]
    ) -> RecurrenceOutput:
        state = self.cell.init_state(drive)
        with torch.no_grad():
            for _ in range(n - tracked):
                state = self.cell(drive, state)
                _record(recorder, state)
        need_lcp = self.uses_lcp or self.monitor_lcp
        previous = state
        for t in range(tracked):
            if t == tracked - 1 and need_lcp:
                state = _as_graph_input(state)
            previous, state = state, self.cell(drive, state)
            _record(recorder, state)
        return self._finish(state, previous, n, need_lcp, NeumannStats(), recorder)

    def _rbp(self, drive: Tensor, n: int, recorder: Optional[List[State]]) -> RecurrenceOutput:
        state = self.cell.init_state(drive)
        with torch.no_grad():
            for _ in range(n - 1):
                state = self.cell(drive, state)
                _record(recorder, state)
        previous = state_like([p.detach().requires_grad_() for p in state_parts(state)], state)
        last = self.cell(drive, previous)
        _record(recorder, last)
        stats = NeumannStats()
        parts = list(state_parts(last))
        if any(p.requires_grad for p in parts):
            idx = self._implicit_indices(len(parts))
            prev_parts = state_parts(previous)
            corrected = rbp_attach(
                [prev_parts[i] for i in idx],
                [parts[i] for i in idx],
                self.neumann_steps,
                self.norm_cap,
                self.cap_threshold,
                stats,
            )
            for i, tensor in zip(idx, corrected):
                parts[i] = tensor
        out_state = state_like(parts, last)
        need_lcp = self.uses_lcp or self.monitor_lcp
        result = self._finish(last, previous, n, need_lcp, stats, recorder)
        result.state = out_state
        return result

    # -- shared pieces -------------------------------------------------------------------------

    def _implicit_indices(self, n_parts: int) -> Tuple[int, ...]:
        chosen = getattr(self.cell, "implicit_components", None)
        return tuple(range(n_parts)) if chosen is None else tuple(chosen)

    def _finish(
        self,
        last: State,
        previous: State,
        n: int,
        need_lcp: bool,
        stats: NeumannStats,
        recorder: Optional[List[State]],
    ) -> RecurrenceOutput:
        diag = RecurrenceDiagnostics(
            self.method, n, relative_residual(last, previous), neumann=stats
        )
        penalty = None
        if need_lcp:
            idx = self._implicit_indices(len(state_parts(last)))
            prev_parts, last_parts = state_parts(previous), state_parts(last)
            penalty, fraction = lipschitz_penalty(
                [prev_parts[i] for i in idx],
                [last_parts[i] for i in idx],
                self.lcp_lambda,
                self.lcp_reduction,
                create_graph=self.uses_lcp,
                blockwise=bool(getattr(self.cell, "lcp_blockwise", False)),
            )
            if not self.uses_lcp:
                penalty = penalty.detach()
            diag.lcp = float(penalty.detach())
            diag.lcp_fraction_above = float(fraction)
        return RecurrenceOutput(last, penalty, diag, recorder)

    # -- monitoring ----------------------------------------------------------------------------

    @torch.no_grad()
    def spectral_radius(
        self,
        x: Tensor,
        steps: Optional[int] = None,
        iterations: int = 50,
        state: Optional[State] = None,
        seed: int = 0,
    ) -> float:
        """Power-iteration estimate of the spectral radius of J = dF/dh at the reached state.

        Runs ``steps`` (default ``test_steps``) steps from h0 = 0 unless ``state`` is given, then
        iterates v <- J^T v (same spectrum as J) with vector-Jacobian products and returns the
        geometric-mean growth rate over the second half of the iterations. Values below 1 mean the
        map is locally contractive, so the Neumann series and the iteration converge.
        """
        drive = self.cell.prepare(x)
        if state is None:
            state = self._iterate(drive, steps or self.test_steps, None, None).state
        return spectral_radius(lambda h: self.cell(drive, h), state, iterations, seed)


def spectral_radius(step, state: State, iterations: int = 50, seed: int = 0) -> float:
    """Power-iteration estimate of rho(dF/dh) at ``state`` for the map ``step(state) -> state``."""
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


def check_steps(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _as_graph_input(state: State) -> State:
    """Make sure the state before the last step can be differentiated against (LCP under BPTT)."""
    parts = [p if p.requires_grad else p.detach().requires_grad_() for p in state_parts(state)]
    return state_like(parts, state)


def _record(recorder: Optional[List[State]], state: State) -> None:
    if recorder is not None:
        recorder.append(_detach(state))


def _per_sample_max_residual(new: State, old: State) -> float:
    new_parts, old_parts = state_parts(new), state_parts(old)
    diff = sum(((a - b).double().flatten(1) ** 2).sum(1) for a, b in zip(new_parts, old_parts))
    size = sum((a.double().flatten(1) ** 2).sum(1) for a in new_parts)
    ratio = torch.sqrt(diff) / torch.sqrt(size).clamp_min(torch.finfo(torch.float64).tiny)
    return float(ratio.max())
