"""One engine that runs any recurrent cell for N steps and trains it with a chosen method.

Methods (one switch everywhere):

- ``bptt``: unroll N steps with the full graph (memory linear in N).
- ``tbptt``: N - k steps without a graph, then k tracked steps.
- ``rbp``: N - 1 steps without a graph, one tracked step from the detached state h_{N-1}, and
  the truncated Neumann series in backward (memory constant in N).
- ``cbptt`` / ``crbp``: the same as ``bptt`` / ``rbp`` plus the Lipschitz Coefficient Penalty,
  computed with ``create_graph=True`` so that it trains the cell towards a contraction.

When autograd is off (``torch.no_grad`` / inference) the engine only iterates, optionally halting
once the relative residual falls under a tolerance. :meth:`RecurrentEngine.iterate` gives the
states one by one (step-by-step readouts); :meth:`RecurrenceOutput.after_backward` registers what
must run once backward has gone through the recurrence (e.g. logging the Neumann statistics).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .base import RecurrentCell, State, state_like, state_parts
from .diagnostics import (
    RecurrenceDiagnostics,
    per_sample_max_residual,
    relative_residual,
    spectral_radius,
)
from .lcp import lipschitz_penalty
from .neumann import NeumannStats, rbp_attach
from .spec import METHODS, EngineSpec

__all__ = ["METHODS", "RecurrenceOutput", "RecurrentEngine", "check_steps"]

AfterBackward = Callable[[RecurrenceDiagnostics], None]
_SPEC_FIELDS = frozenset(f.name for f in fields(EngineSpec))


@dataclass
class RecurrenceOutput:
    """Result of :meth:`RecurrentEngine.forward`.

    Attributes:
        state: the final state h_N (a tensor, or a tuple for cells like the convLSTM), carrying
            the gradient of the chosen method.
        lcp: the penalty to add to the loss (0-d, differentiable) under cbptt/crbp, else None
            (a penalty computed only for monitoring is in ``diagnostics.lcp``).
        diagnostics: see :class:`RecurrenceDiagnostics`.
        states: every state h_1..h_N, detached, when ``record_states=True`` (else None).
    """

    state: State
    lcp: Optional[Tensor]
    diagnostics: RecurrenceDiagnostics
    states: Optional[List[State]] = None
    _after_backward: List[AfterBackward] = field(default_factory=list, repr=False)

    def after_backward(self, callback: AfterBackward) -> None:
        """Call ``callback(diagnostics)`` once backward has gone through the whole recurrence
        (the Neumann statistics are filled by then). Never called if no backward runs."""
        self._after_backward.append(callback)


class _BackwardProbe(torch.autograd.Function):
    """Identity on the engine's input; its backward runs the after-backward callbacks, once the
    gradient has reached the input, i.e. after the whole recurrence was back-propagated."""

    @staticmethod
    def forward(ctx, output: "RecurrenceOutput", x: Tensor) -> Tensor:
        ctx.output = output
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        output = ctx.output
        for callback in output._after_backward:
            callback(output.diagnostics)
        return None, grad


def _detach(state: State) -> State:
    return state_like([p.detach() for p in state_parts(state)], state)


class RecurrentEngine(nn.Module):
    """Runs ``cell`` for N steps on a fixed drive from h0 = 0 and applies a learning method.

    Build it from keyword arguments (the fields of :class:`~crbp_d2.recurrent.spec.EngineSpec`)
    or from a spec with :meth:`from_spec`; either way the settings are validated by the spec.

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
        lcp_weight: weight of the LCP in the loss; carried for the front-ends, unused here.
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
        lcp_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.spec = EngineSpec(
            steps=steps,
            test_steps=test_steps,
            method=method,
            tbptt_steps=tbptt_steps,
            neumann_steps=neumann_steps,
            norm_cap=norm_cap,
            cap_threshold=cap_threshold,
            lcp_weight=lcp_weight,
            lcp_lambda=lcp_lambda,
            lcp_reduction=lcp_reduction,
            monitor_lcp=monitor_lcp,
            halt_tolerance=halt_tolerance,
        )

    @classmethod
    def from_spec(cls, cell: RecurrentCell, spec: EngineSpec) -> "RecurrentEngine":
        """The engine running ``cell`` as ``spec`` says."""
        engine = cls(cell, steps=spec.steps)
        engine.spec = spec
        return engine

    # -- the settings, read from the spec -----------------------------------------------------
    # Every field of the spec reads as an attribute (``engine.neumann_steps``); assigning one
    # (``engine.halt_tolerance = 0.5``) replaces the spec by a validated copy. ``test_steps``
    # reads as the steps actually run in eval mode.

    def __getattr__(self, name: str):
        if name in _SPEC_FIELDS:
            value = getattr(self.spec, name)
            return self.spec.eval_steps if name == "test_steps" else value
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in _SPEC_FIELDS:
            self.spec = self.spec.replace(**{name: value})
        else:
            super().__setattr__(name, value)

    @property
    def uses_lcp(self) -> bool:
        """True when the LCP is trained (cbptt, crbp): ``forward(...).lcp`` is then a tensor."""
        return self.spec.uses_lcp

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"method={s.method}, steps={s.steps}, test_steps={s.eval_steps}, "
            f"neumann_steps={s.neumann_steps}, norm_cap={s.norm_cap}, "
            f"lcp_lambda={s.lcp_lambda}, lcp_reduction={s.lcp_reduction}"
        )

    # -- running ------------------------------------------------------------------------------

    def iterate(self, x: Tensor, steps: Optional[int] = None) -> Iterator[State]:
        """Yield the states h_0 (zero), h_1, ..., h_steps for input ``x`` (B, C_in, H, W).

        ``steps`` defaults to the mode's steps. The states carry a graph only if autograd is on
        (use it under ``torch.no_grad()`` for step-by-step readouts).
        """
        n = self._steps_for_call(steps)
        drive = self.cell.prepare(x)
        yield from self._states(drive, self.cell.init_state(drive), n)

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
        n = self._steps_for_call(steps)
        recorder: Optional[List[State]] = [] if record_states else None
        if not torch.is_grad_enabled():
            tol = halt_tolerance if halt_tolerance is not None else self.spec.halt_tolerance
            return self._iterate(self.cell.prepare(x), n, tol, recorder)
        result = RecurrenceOutput(x, None, RecurrenceDiagnostics(self.method, n, float("nan")))
        # the probe sits on the input, so its backward runs after the whole recurrence's
        x = _BackwardProbe.apply(result, x if x.requires_grad else x.detach().requires_grad_())
        drive = self.cell.prepare(x)
        if self.method in ("bptt", "cbptt"):
            out = self._unrolled(drive, n, n, recorder)
        elif self.method == "tbptt":
            k = self.spec.tbptt_steps if self.spec.tbptt_steps is not None else (n + 1) // 2
            out = self._unrolled(drive, n, min(k, n), recorder)
        else:
            out = self._rbp(drive, n, recorder)
        result.state, result.lcp, result.diagnostics = out.state, out.lcp, out.diagnostics
        result.states = out.states
        return result

    def _steps_for_call(self, steps: Optional[int]) -> int:
        n = steps if steps is not None else (self.steps if self.training else self.test_steps)
        check_steps(n, "steps")
        return n

    # -- the three ways of running -------------------------------------------------------------

    def _states(self, drive: Tensor, state: State, n: int) -> Iterator[State]:
        """Yield ``state`` and the ``n`` states that follow it."""
        yield state
        for _ in range(n):
            state = self.cell(drive, state)
            yield state

    def _iterate(
        self, drive: Tensor, n: int, tol: Optional[float], recorder: Optional[List[State]]
    ) -> RecurrenceOutput:
        previous, residual, halted, t = None, float("inf"), False, 0
        for t, state in enumerate(self._states(drive, self.cell.init_state(drive), n)):
            if previous is not None:
                _record(recorder, state)
                residual = relative_residual(state, previous)
                if tol is not None and per_sample_max_residual(state, previous) < tol:
                    halted = True
                    break
            previous = state
        diag = RecurrenceDiagnostics(self.method, t, residual, halted=halted)
        return RecurrenceOutput(state, None, diag, recorder)

    def _run_without_graph(self, drive: Tensor, n: int, recorder: Optional[List[State]]) -> State:
        """h_n from h_0 = 0 with autograd off (recording h_1..h_n)."""
        with torch.no_grad():
            for t, state in enumerate(self._states(drive, self.cell.init_state(drive), n)):
                if t > 0:
                    _record(recorder, state)
        return state

    def _unrolled(
        self, drive: Tensor, n: int, tracked: int, recorder: Optional[List[State]]
    ) -> RecurrenceOutput:
        state = self._run_without_graph(drive, n - tracked, recorder)
        need_lcp = self.spec.uses_lcp or self.spec.monitor_lcp
        previous = state
        for t in range(tracked):
            if t == tracked - 1 and need_lcp:
                state = _as_graph_input(state)
            previous, state = state, self.cell(drive, state)
            _record(recorder, state)
        return self._finish(state, previous, n, need_lcp, NeumannStats(), recorder)

    def _rbp(self, drive: Tensor, n: int, recorder: Optional[List[State]]) -> RecurrenceOutput:
        state = self._run_without_graph(drive, n - 1, recorder)
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
                self.spec.neumann_steps,
                self.spec.norm_cap,
                self.spec.cap_threshold,
                stats,
            )
            for i, tensor in zip(idx, corrected):
                parts[i] = tensor
        out_state = state_like(parts, last)
        need_lcp = self.spec.uses_lcp or self.spec.monitor_lcp
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
            value, fraction = lipschitz_penalty(
                [prev_parts[i] for i in idx],
                [last_parts[i] for i in idx],
                self.spec.lcp_lambda,
                self.spec.lcp_reduction,
                create_graph=self.spec.uses_lcp,
                blockwise=bool(getattr(self.cell, "lcp_blockwise", False)),
            )
            if self.spec.uses_lcp:
                penalty = value
            diag.lcp = float(value.detach())
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

        Runs ``steps`` (default ``test_steps``) steps from h0 = 0 unless ``state`` is given; see
        :func:`~crbp_d2.recurrent.diagnostics.spectral_radius`.
        """
        drive = self.cell.prepare(x)
        if state is None:
            state = self._run_without_graph(drive, steps or self.test_steps, None)
        return spectral_radius(lambda h: self.cell(drive, h), state, iterations, seed)


def check_steps(value: int, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _as_graph_input(state: State) -> State:
    """Make sure the state before the last step can be differentiated against (LCP under BPTT)."""
    parts = [p if p.requires_grad else p.detach().requires_grad_() for p in state_parts(state)]
    return state_like(parts, state)


def _record(recorder: Optional[List[State]], state: State) -> None:
    if recorder is not None:
        recorder.append(_detach(state))
