"""One engine that runs any recurrent cell for N steps and trains it with a chosen method.

Methods (one switch everywhere):

- ``bptt``: unroll N steps with the full graph (memory linear in N).
- ``tbptt``: N - k steps without a graph, then k tracked steps.
- ``rbp``: N - 1 steps without a graph, one tracked step from the detached state h_{N-1}, and
  the truncated Neumann series in backward (memory constant in N).
- ``jfb``: like ``rbp`` with the Jacobian-free backward (the identity in place of the series).
- ``phantom``: N - k steps without a graph, then k damped tracked steps (phantom gradients).
- ``cbptt`` / ``crbp`` / ``cjfb`` / ``cphantom``: the same plus the Lipschitz Coefficient Penalty,
  computed with ``create_graph=True`` so that it trains the cell towards a contraction.

The sets are named once in :mod:`.spec`: ``METHODS``, ``LCP_METHODS`` (train the LCP),
``NEUMANN_METHODS`` (the Neumann backward), ``FIXED_POINT_METHODS`` (assume h_N is a fixed
point), ``BPTT_METHODS`` and ``PHANTOM_METHODS``.

When autograd is off (``torch.no_grad`` / inference) the engine runs the configured forward solver
(plain iteration or Anderson) with the mode's steps as its budget, halting once the relative
residual falls under the halting tolerance (else under ``solver_tol``, the training rule); plain
iteration with a halting tolerance halts on the largest per-sample residual.
:meth:`RecurrentEngine.iterate` gives the states one by one (step-by-step readouts);
:meth:`RecurrenceOutput.after_backward` registers what must run once backward has gone through
the recurrence (e.g. logging the Neumann statistics).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import fidelity
from .base import State, cell_init_state, cell_prepare, state_like, state_parts
from .bf16 import bf16_step, why_no_bf16
from .compiled import compiled_step
from .cuda_graph import graphed_steps
from .diagnostics import (
    RecurrenceDiagnostics,
    per_sample_max_residual,
    relative_residual,
    spectral_radius,
)
from .fidelity import gradient_agreement
from .lcp import lipschitz_penalty
from .neumann import NeumannStats, rbp_attach
from .solvers import SolverStats, solve
from .spec import BPTT_METHODS, METHODS, PHANTOM_METHODS, SANE_MAX_STEPS, EngineSpec

__all__ = [
    "METHODS",
    "NonFiniteStateError",
    "RecurrenceOutput",
    "RecurrentEngine",
    "StepProgress",
    "check_steps",
    "gradient_agreement",
]

logger = logging.getLogger(__name__)

AfterBackward = Callable[[RecurrenceDiagnostics], None]


class NonFiniteStateError(RuntimeError):
    """The recurrent state became NaN or infinite; the message names the step and the method."""


class StepProgress:
    """Progress lines on stderr for a run of more than :data:`~.spec.SANE_MAX_STEPS` cell steps
    (a valid but huge step count, warned about where the config is read): ``recurrence (METHOD):
    step K of N (P%), S s``, every tenth of the run and at least every ``period_s`` seconds, so
    that a pass of hours shows that it moves. Shorter runs print nothing."""

    def __init__(self, total: int, what: str, period_s: float = 30.0) -> None:
        self.total, self.what, self.period_s = int(total), what, period_s
        self.active = self.total > SANE_MAX_STEPS
        self.done = 0
        self._every = max(1, self.total // 10)
        self._start = self._last = time.monotonic()

    def wrap(self, step: Callable) -> Callable:
        """``step`` that counts its calls (``step`` itself when inactive)."""
        if not self.active:
            return step

        def counted(*args, **kwargs):
            out = step(*args, **kwargs)
            self.tick()
            return out

        return counted

    def tick(self) -> None:
        self.done += 1
        now = time.monotonic()
        due = self.done % self._every == 0 or self.done == self.total
        if due or now - self._last >= self.period_s:
            self._last = now
            print(
                f"recurrence ({self.what}): step {self.done:,} of {self.total:,} "
                f"({100 * self.done / self.total:.0f}%), {now - self._start:.0f} s",
                file=sys.stderr,
                flush=True,
            )


@dataclass
class RecurrenceOutput:
    """Result of :meth:`RecurrentEngine.forward`.

    Attributes:
        state: the final state h_N (a tensor, or a tuple for cells like the convLSTM), carrying
            the gradient of the chosen method.
        lcp: the penalty to add to the loss (0-d, differentiable) under the
            LCP_METHODS, else None
            (a penalty computed only for monitoring is in ``diagnostics.lcp``).
        diagnostics: see :class:`RecurrenceDiagnostics`.
        states: every state h_1..h_N, detached, when ``record_states=True`` (else None).
    """

    state: State
    lcp: Optional[Tensor]
    diagnostics: RecurrenceDiagnostics
    states: Optional[List[State]] = None
    _hooks: "_AfterBackwardHooks" = field(default=None, repr=False)

    def after_backward(self, callback: AfterBackward) -> None:
        """Call ``callback(diagnostics)`` once backward has gone through the whole recurrence
        (the Neumann statistics are filled by then). Never called if no backward runs."""
        if self._hooks is None:
            raise RuntimeError("after_backward needs an output computed with autograd on")
        self._hooks.callbacks.append(callback)


@dataclass
class _AfterBackwardHooks:
    """What the probe calls back. Holds no tensor: the autograd graph keeps it alive, and a
    reference from it back to the output's state would make a cycle autograd never frees."""

    diagnostics: Optional[RecurrenceDiagnostics] = None
    callbacks: List[AfterBackward] = field(default_factory=list)


class _BackwardProbe(torch.autograd.Function):
    """Identity on the engine's input; its backward runs the after-backward callbacks, once the
    gradient has reached the input, i.e. after the whole recurrence was back-propagated."""

    @staticmethod
    def forward(ctx, hooks: _AfterBackwardHooks, x: Tensor) -> Tensor:
        ctx.hooks = hooks
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        hooks = ctx.hooks
        for callback in hooks.callbacks:
            callback(hooks.diagnostics)
        return None, grad


def _detach(state: State) -> State:
    return state_like([p.detach() for p in state_parts(state)], state)


class RecurrentEngine(nn.Module):
    """Runs ``cell`` for N steps on a fixed drive from h0 = 0 and applies a learning method.

    Build it from keyword arguments (the fields of :class:`~crbp_d2.recurrent.spec.EngineSpec`,
    which documents each) or from a spec with :meth:`from_spec`; either way the settings are
    validated by the spec.

    Args:
        cell: any ``nn.Module`` with ``forward(drive, state) -> state`` (a tensor or a tuple of
            tensors). Optional, with defaults: ``prepare(x)`` (identity), ``init_state(drive)``
            (zeros with ``hidden_channels`` channels if the cell has that attribute, else zeros
            shaped like the drive), ``implicit_components`` (all parts), ``lcp_blockwise``
            (False). :class:`RecurrentCell` provides them all.
        steps: N, the number of steps in training.
        method: ``bptt | tbptt | rbp | cbptt | crbp | jfb | cjfb | phantom | cphantom``.
        test_steps: steps when the engine is in eval mode (default: ``steps``).
        settings: any other field of the spec (``neumann_steps``, ``norm_cap``, ``lcp_lambda``,
            ``solver``, ...).

    Example::

        >>> import torch
        >>> from crbp_d2.recurrent import HGRUCell, RecurrentEngine
        >>> engine = RecurrentEngine(HGRUCell(channels=4, kernel_size=3), steps=6, method="crbp")
        >>> out = engine(torch.rand(2, 4, 8, 8))
        >>> (out.state.sum() + out.lcp).backward()
        >>> out.diagnostics.neumann_terms
        15
    """

    def __init__(
        self,
        cell: nn.Module,
        steps: int,
        method: str = "crbp",
        test_steps: Optional[int] = None,
        **settings,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.spec = EngineSpec(steps=steps, method=method, test_steps=test_steps, **settings)

    @classmethod
    def from_spec(cls, cell: nn.Module, spec: EngineSpec) -> "RecurrentEngine":
        """The engine running ``cell`` as ``spec`` says."""
        engine = cls(cell, steps=spec.steps)
        engine.spec = spec
        return engine

    # -- the settings, read from the spec -----------------------------------------------------
    # ``engine.spec`` (an EngineSpec) holds every setting; read it there (``engine.spec.method``).
    # The settings callers change after building have properties: assigning one replaces the
    # spec by a validated copy.

    @property
    def steps(self) -> int:
        """N, the steps in train mode (``spec.steps``)."""
        return self.spec.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self.spec = self.spec.replace(steps=value)

    @property
    def test_steps(self) -> int:
        """The steps actually run in eval mode (``spec.test_steps``, else ``spec.steps``);
        assigning ``None`` makes them ``steps`` again."""
        return self.spec.eval_steps

    @test_steps.setter
    def test_steps(self, value: Optional[int]) -> None:
        self.spec = self.spec.replace(test_steps=value)

    @property
    def halt_tolerance(self) -> Optional[float]:
        """Inference halts once the relative residual falls under it (None: never)."""
        return self.spec.halt_tolerance

    @halt_tolerance.setter
    def halt_tolerance(self, value: Optional[float]) -> None:
        self.spec = self.spec.replace(halt_tolerance=value)

    @property
    def uses_lcp(self) -> bool:
        """True when the LCP is trained (the methods of ``LCP_METHODS``): ``forward(...).lcp`` is
        then a tensor."""
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
        drive = cell_prepare(self.cell, x)
        yield from self._states(drive, cell_init_state(self.cell, drive), n)

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
                Without a graph this runs N plain steps: a solver's iterates are not the
                recurrence's steps, so neither the configured solver nor its tolerances apply
                (a ``halt_tolerance`` passed to this call does).
            halt_tolerance: override the inference halting tolerance for this call.
        """
        n = self._steps_for_call(steps)
        recorder: Optional[List[State]] = [] if record_states else None
        if not torch.is_grad_enabled():
            drive = cell_prepare(self.cell, x)
            if recorder is not None:
                return self._checked(self._iterate(drive, n, halt_tolerance, recorder), drive)
            tol = halt_tolerance if halt_tolerance is not None else self.spec.halt_tolerance
            if self.spec.solver == "iterate" and (tol is not None or self.spec.solver_tol is None):
                return self._checked(self._iterate(drive, n, tol, recorder), drive)
            return self._checked(self._solved(drive, n, tol, recorder), drive)
        hooks = _AfterBackwardHooks()
        # the probe sits on the input, so its backward runs after the whole recurrence's
        x = _BackwardProbe.apply(hooks, x if x.requires_grad else x.detach().requires_grad_())
        drive = cell_prepare(self.cell, x)
        if self.spec.method in BPTT_METHODS:
            out = self._unrolled(drive, n, n, recorder)
        elif self.spec.method == "tbptt":
            k = self.spec.tbptt_steps if self.spec.tbptt_steps is not None else (n + 1) // 2
            out = self._unrolled(drive, n, min(k, n), recorder)
        elif self.spec.method in PHANTOM_METHODS:
            out = self._unrolled(drive, n, min(self.spec.phantom_steps, n), recorder, damped=True)
        else:  # FIXED_POINT_METHODS (rbp, crbp, jfb, cjfb): one tracked step
            out = self._one_step(drive, n, recorder)
        hooks.diagnostics = out.diagnostics
        out._hooks = hooks
        return self._checked(out, drive)

    def _checked(self, out: RecurrenceOutput, drive: Tensor) -> RecurrenceOutput:
        """Stop (or warn) on a non-finite state, naming its first step and the method; flag a
        state that has not converged (and warn once for the fixed-point methods)."""
        spec, diag = self.spec, out.diagnostics
        if not all(bool(torch.isfinite(p).all()) for p in state_parts(out.state)):
            step = self._first_nonfinite_step(drive, diag.steps)
            message = (
                f"{spec.method}: the recurrent state became non-finite at step {step} of "
                f"{diag.steps} (the cell diverges: lower the learning rate, raise the LCP weight "
                "or run fewer steps; NONFINITE warn only warns)"
            )
            if spec.nonfinite == "error":
                raise NonFiniteStateError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            diag.nonfinite_step = step
        diag.converged = bool(diag.residual <= spec.convergence_tol)
        if not diag.converged and spec.assumes_fixed_point and self.training:
            if not getattr(self, "_warned_unconverged", False):
                self._warned_unconverged = True
                warnings.warn(
                    f"{spec.method}: the state has not converged after {diag.steps} steps "
                    f"(relative residual {diag.residual:.3g} > CONVERGENCE_TOL "
                    f"{spec.convergence_tol}); the {spec.method} gradient assumes a fixed point "
                    "(run more steps, or use the LCP); warned once",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return out

    @torch.no_grad()
    def _first_nonfinite_step(self, drive: Tensor, steps: int) -> int:
        for t, state in enumerate(
            self._states(drive.detach(), cell_init_state(self.cell, drive), steps)
        ):
            if not all(bool(torch.isfinite(p).all()) for p in state_parts(state)):
                return t
        return steps

    def _steps_for_call(self, steps: Optional[int]) -> int:
        n = steps if steps is not None else (self.steps if self.training else self.test_steps)
        check_steps(n, "steps")
        return n

    # -- the ways of running -------------------------------------------------------------------

    def _states(
        self, drive: Tensor, state: State, n: int, step: Optional[Callable] = None
    ) -> Iterator[State]:
        """Yield ``state`` and the ``n`` states that follow it (through ``step``, default the
        cell)."""
        step = step or self.cell
        yield state
        for _ in range(n):
            state = step(drive, state)
            yield state

    def _graph_free_step(self, drive: Tensor) -> Callable[[Tensor, State], State]:
        """The cell step for evaluations without a graph: compiled with ``compile_cell``, under
        bfloat16 autocast with ``autocast_bf16`` (where the drive's device allows it)."""
        step = compiled_step(self.cell) if self.spec.compile_cell else self.cell
        return bf16_step(step) if self._runs_bf16(drive) else step

    def _runs_bf16(self, drive: Tensor) -> bool:
        """``autocast_bf16`` and the drive on a CPU with native bfloat16 (else logged once)."""
        if not self.spec.autocast_bf16:
            return False
        why = why_no_bf16(drive)
        if why is not None and not self.__dict__.get("_warned_bf16", False):
            self.__dict__["_warned_bf16"] = True
            logger.warning("autocast_bf16: %s; float32", why)
        return why is None

    def _iterate(
        self, drive: Tensor, n: int, tol: Optional[float], recorder: Optional[List[State]]
    ) -> RecurrenceOutput:
        previous, residual, halted, t = None, float("inf"), False, 0
        initial = cell_init_state(self.cell, drive)
        step = StepProgress(n, self.spec.method).wrap(self._graph_free_step(drive))
        for t, state in enumerate(self._states(drive, initial, n, step)):
            if previous is not None:
                _record(recorder, state)
                residual = relative_residual(state, previous)
                if tol is not None and per_sample_max_residual(state, previous) < tol:
                    halted = True
                    break
            previous = state
        diag = RecurrenceDiagnostics(self.spec.method, t, residual, halted=halted)
        return RecurrenceOutput(state, None, diag, recorder)

    def _solved(
        self, drive: Tensor, n: int, tol: Optional[float], recorder: Optional[List[State]]
    ) -> RecurrenceOutput:
        """Inference with the configured solver (as in training): at most ``n`` evaluations,
        stopping at ``tol`` (the halting tolerance, on the batch's relative residual) or else at
        ``solver_tol``."""
        state, stats = self._run_without_graph(drive, n, recorder, tol)
        diag = RecurrenceDiagnostics(
            self.spec.method,
            stats.evaluations,
            stats.residual,
            halted=stats.converged,
            forward_evaluations=stats.evaluations,
            solver_residual=stats.residual,
            solver_fell_back=stats.fell_back if stats.solver == "anderson" else None,
        )
        return RecurrenceOutput(state, None, diag, recorder)

    def _run_without_graph(
        self,
        drive: Tensor,
        budget: int,
        recorder: Optional[List[State]],
        tol: Optional[float] = None,
    ) -> Tuple[State, SolverStats]:
        """From h_0 = 0 with autograd off: the configured solver with ``budget`` cell
        evaluations, stopping at ``tol`` (default ``solver_tol``), recording every state it
        computes."""
        spec = self.spec
        step = StepProgress(budget, spec.method).wrap(self._graph_free_step(drive))
        tol = spec.solver_tol if tol is None else tol
        if spec.cuda_graph and spec.solver == "iterate" and tol is None and recorder is None:
            if drive.is_cuda and budget > 1:  # fixed N: budget - 1 steps replayed, 1 eager
                with torch.no_grad():
                    state = graphed_steps(self.cell)(
                        drive.detach(), cell_init_state(self.cell, drive), budget - 1
                    )
                    new = step(drive, state)
                residual = relative_residual(new, state)
                return new, SolverStats("iterate", budget, residual, trace=[residual])
            if not drive.is_cuda and not self.__dict__.get("_warned_cuda_graph", False):
                self.__dict__["_warned_cuda_graph"] = True
                logger.warning("cuda_graph: the drive is on %s, not CUDA; eager", drive.device)
        with torch.no_grad():
            return solve(
                spec.solver,
                lambda h: step(drive, h),
                cell_init_state(self.cell, drive),
                budget,
                tol,
                spec.anderson_window,
                spec.anderson_damping,
                None if recorder is None else lambda h: _record(recorder, h),
            )

    def _unrolled(
        self,
        drive: Tensor,
        n: int,
        tracked: int,
        recorder: Optional[List[State]],
        damped: bool = False,
    ) -> RecurrenceOutput:
        """``n - tracked`` steps without a graph, then ``tracked`` steps with one (bptt, tbptt);
        ``damped`` tracks h <- (1 - lambda) h + lambda F(h) instead (phantom)."""
        state, solver_stats = self._run_without_graph(drive, n - tracked, recorder)
        need_lcp = self.spec.uses_lcp or self.spec.monitor_lcp
        lam = self.spec.phantom_damping
        previous = last = state
        cell = StepProgress(tracked, self.spec.method + ", tracked").wrap(self.cell)
        for t in range(tracked):
            if t == tracked - 1 and need_lcp:
                state = _as_graph_input(state)
            previous, last = state, cell(drive, state)
            if damped:
                mixed = [
                    (1 - lam) * a + lam * b for a, b in zip(state_parts(state), state_parts(last))
                ]
                state = state_like(mixed, last)
            else:
                state = last
            _record(recorder, state)
        # residual and LCP are those of the cell map F at its last evaluation
        result = self._finish(last, previous, need_lcp, NeumannStats(), recorder, solver_stats)
        diag = result.diagnostics
        diag.steps = diag.forward_evaluations = solver_stats.evaluations + tracked
        result.state = state
        return result

    def _one_step(self, drive: Tensor, n: int, recorder: Optional[List[State]]) -> RecurrenceOutput:
        """n - 1 steps without a graph, one tracked step from the detached h_{n-1}; rbp/crbp
        replace its gradient by the Neumann series, jfb/cjfb keep the one-step gradient."""
        state, solver_stats = self._run_without_graph(drive, n - 1, recorder)
        previous = state_like([p.detach().requires_grad_() for p in state_parts(state)], state)
        last = self.cell(drive, previous)
        _record(recorder, last)
        stats = NeumannStats()
        parts = list(state_parts(last))
        spec = self.spec
        if spec.uses_neumann and any(p.requires_grad for p in parts):
            idx = self._implicit_indices(len(parts))
            prev_parts = state_parts(previous)
            recompute = None
            if len(idx) == len(parts):  # VJPs through the compiled and/or bfloat16 step
                bf16 = self._runs_bf16(drive)
                if spec.compile_cell or bf16:
                    step = compiled_step(self.cell) if spec.compile_cell else self.cell
                    step = bf16_step(step) if bf16 else step
                    recompute = _recompute(step, drive.detach(), previous)
            corrected = rbp_attach(
                [prev_parts[i] for i in idx],
                [parts[i] for i in idx],
                spec.neumann_steps,
                spec.norm_cap,
                spec.cap_threshold,
                stats,
                spec.neumann_tol,
                spec.cap_relative,
                recompute,
            )
            for i, tensor in zip(idx, corrected):
                parts[i] = tensor
        need_lcp = spec.uses_lcp or spec.monitor_lcp
        result = self._finish(last, previous, need_lcp, stats, recorder, solver_stats)
        diag = result.diagnostics
        diag.steps = diag.forward_evaluations = solver_stats.evaluations + 1
        result.state = state_like(parts, last)
        return result

    # -- shared pieces -------------------------------------------------------------------------

    def _implicit_indices(self, n_parts: int) -> Tuple[int, ...]:
        chosen = getattr(self.cell, "implicit_components", None)
        return tuple(range(n_parts)) if chosen is None else tuple(chosen)

    def _finish(
        self,
        last: State,
        previous: State,
        need_lcp: bool,
        stats: NeumannStats,
        recorder: Optional[List[State]],
        solver_stats: SolverStats,
    ) -> RecurrenceOutput:
        """Diagnostics and the LCP of the last cell evaluation ``last = F(previous)``."""
        diag = RecurrenceDiagnostics(
            self.spec.method,
            0,  # set by the caller through forward_evaluations
            relative_residual(last, previous),
            neumann=stats,
            solver_residual=solver_stats.residual if solver_stats.evaluations else None,
            solver_fell_back=solver_stats.fell_back if solver_stats.solver == "anderson" else None,
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

    # -- gradient fidelity (crbp_d2.recurrent.fidelity) ----------------------------------------

    def parameter_gradient(
        self, x: Tensor, loss_fn: Callable[[State], Tensor]
    ) -> Tuple[Tensor, RecurrenceDiagnostics]:
        """See :func:`crbp_d2.recurrent.fidelity.parameter_gradient`."""
        return fidelity.parameter_gradient(self, x, loss_fn)

    def gradient_fidelity(
        self, x: Tensor, loss_fn: Callable[[State], Tensor], **options
    ) -> Dict[str, float]:
        """See :func:`crbp_d2.recurrent.fidelity.gradient_fidelity` (a converged reference)."""
        return fidelity.gradient_fidelity(self, x, loss_fn, **options)

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
        drive = cell_prepare(self.cell, x)
        if state is None:
            state = self._iterate(drive, steps or self.test_steps, None, None).state
        return spectral_radius(lambda h: self.cell(drive, h), state, iterations, seed)


def check_steps(value: int, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _as_graph_input(state: State) -> State:
    """The state before the last step as inputs the LCP can differentiate against (under BPTT):
    a fresh alias of each part (a leaf if it has no graph), so that d F / d part is F's partial
    derivative. Without the alias, a part computed from another (the convLSTM's h from its c)
    would add that path to the other's column sums."""
    parts = [
        p.view_as(p) if p.requires_grad else p.detach().requires_grad_() for p in state_parts(state)
    ]
    return state_like(parts, state)


def _recompute(step: Callable, drive: Tensor, template: State) -> Callable:
    """``prev_parts -> step(drive, prev)``'s parts (the Neumann VJPs' recomputed step)."""

    def run(prev):
        return state_parts(step(drive, state_like(list(prev), template)))

    return run


def _record(recorder: Optional[List[State]], state: State) -> None:
    if recorder is not None:
        recorder.append(_detach(state))
