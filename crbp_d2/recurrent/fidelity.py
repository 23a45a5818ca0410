"""Gradient fidelity: how close an engine's parameter gradient is to the exact implicit one.

The reference is the implicit-function gradient at the fixed point h* = F(x, h*)::

    dL/dtheta = (dF/dtheta)^T u,   u = g0 + J^T u,   g0 = dL/dh*,   J = dF/dh at h*

computed by *solving* both equations to a tolerance (Anderson acceleration on the fixed point and
on the affine adjoint map u -> g0 + J^T u), not by running a fixed number of steps and terms: for
a slowly contracting cell (spectral radius 0.985) a fixed count leaves the state and the adjoint
far from converged and the "exact" gradient wrong. The reference reports its own residuals and
the evaluations it spent, and warns (or raises) when it did not reach its tolerance.

A ``bptt`` reference (autograd through ``reference_steps`` plain steps) is kept for comparison;
its state residual is checked against the same tolerance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .base import State, cell_init_state, cell_prepare, state_like, state_parts
from .diagnostics import RecurrenceDiagnostics, relative_residual
from .solvers import anderson

if TYPE_CHECKING:  # pragma: no cover
    from .engine import RecurrentEngine

__all__ = [
    "ReferenceReport",
    "UnconvergedReferenceError",
    "exact_gradient",
    "gradient_agreement",
    "gradient_fidelity",
    "parameter_gradient",
]

REFERENCES = ("rbp", "bptt")
ON_UNCONVERGED = ("warn", "error")
LossFn = Callable[[State], Tensor]


class UnconvergedReferenceError(RuntimeError):
    """The fidelity reference did not reach its tolerance (``on_unconverged="error"``)."""


@dataclass
class ReferenceReport:
    """What the reference solve did."""

    reference: str
    state_residual: float  # ||F(h) - h|| / ||F(h)|| at the reference state
    adjoint_residual: float  # ||g0 + J^T u - u|| / ||g0 + J^T u|| (nan for bptt)
    evaluations: int  # cell evaluations of the fixed-point solve (steps for bptt)
    adjoint_terms: int  # vector-Jacobian products of the adjoint solve (0 for bptt)
    tol: float
    converged: bool

    def scalars(self) -> Dict[str, float]:
        return {
            "reference_residual": self.state_residual,
            "reference_adjoint_residual": self.adjoint_residual,
            "reference_evaluations": float(self.evaluations),
            "reference_adjoint_terms": float(self.adjoint_terms),
            "reference_converged": float(self.converged),
        }


def default_tolerance(dtype: torch.dtype) -> float:
    """1e-10 in float64, 1e-5 otherwise (about 100 float32 epsilons: the rounding floor of a
    slowly contracting cell's residual is eps / (1 - rho))."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def _trainable(engine: "RecurrentEngine") -> List[Tensor]:
    params = [p for p in engine.cell.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the cell has no parameters that require a gradient")
    return params


def _flat_grads(params: List[Tensor], grads) -> Tensor:
    flat = [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]
    return torch.cat(flat).double()


def parameter_gradient(
    engine: "RecurrentEngine", x: Tensor, loss_fn: LossFn
) -> Tuple[Tensor, RecurrenceDiagnostics]:
    """The engine's configured gradient of ``loss_fn(state)`` w.r.t. the cell's parameters
    (flattened, float64; unused parameters give zeros), without touching ``.grad``, for input
    ``x`` (B, C_in, H, W) at the training steps; and the run's diagnostics (Neumann filled)."""
    params = _trainable(engine)
    with torch.enable_grad():
        out = engine(x.detach(), steps=engine.spec.steps)
        grads = torch.autograd.grad(loss_fn(out.state), params, allow_unused=True)
    return _flat_grads(params, grads), out.diagnostics


def exact_gradient(
    engine: "RecurrentEngine",
    x: Tensor,
    loss_fn: LossFn,
    budget: Optional[int] = None,
    adjoint_budget: int = 500,
    tol: Optional[float] = None,
    window: int = 5,
) -> Tuple[Tensor, ReferenceReport]:
    """The implicit gradient of ``loss_fn(h*)`` w.r.t. the cell's parameters (flattened, float64)
    with the fixed point and the adjoint both solved to ``tol`` by Anderson acceleration.

    Args:
        budget: cell evaluations of the fixed-point solve (default max(4 N, 500)).
        adjoint_budget: vector-Jacobian products of the adjoint solve.
        tol: relative residual both solves must reach (default :func:`default_tolerance`).
        window: Anderson window.
    """
    cell, params = engine.cell, _trainable(engine)
    budget = budget or max(4 * engine.spec.steps, 500)
    with torch.no_grad():
        drive0 = cell_prepare(cell, x.detach())
        tol = tol if tol is not None else default_tolerance(drive0.dtype)
        h_star, fixed = anderson(
            lambda h: cell(drive0, h), cell_init_state(cell, drive0), budget, tol, window
        )
    with torch.enable_grad():
        drive = cell_prepare(cell, x.detach())
        prev = state_like([p.detach().requires_grad_() for p in state_parts(h_star)], h_star)
        last = cell(drive, prev)
        last_parts, prev_parts = state_parts(last), state_parts(prev)
        g0 = torch.autograd.grad(loss_fn(last), last_parts, retain_graph=True, allow_unused=True)
        g0 = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(last_parts, g0))

        def adjoint_map(u: State) -> State:
            vjp = torch.autograd.grad(
                last_parts, prev_parts, state_parts(u), retain_graph=True, allow_unused=True
            )
            vjp = [torch.zeros_like(p) if v is None else v for p, v in zip(prev_parts, vjp)]
            return state_like([a + b for a, b in zip(g0, vjp)], last)

        u, adjoint = anderson(adjoint_map, state_like(list(g0), last), adjoint_budget, tol, window)
        grads = torch.autograd.grad(last_parts, params, state_parts(u), allow_unused=True)
    state_residual = relative_residual(last, h_star)
    report = ReferenceReport(
        reference="rbp",
        state_residual=state_residual,
        adjoint_residual=adjoint.residual,
        evaluations=fixed.evaluations,
        adjoint_terms=adjoint.evaluations,
        tol=tol,
        converged=state_residual <= tol and adjoint.residual <= tol,
    )
    return _flat_grads(params, grads), report


def _bptt_gradient(
    engine: "RecurrentEngine", x: Tensor, loss_fn: LossFn, steps: int, tol: Optional[float]
) -> Tuple[Tensor, ReferenceReport]:
    # the engine's own class: fidelity sits below the engine and does not import it
    bptt = type(engine).from_spec(
        engine.cell,
        engine.spec.replace(
            method="bptt", steps=steps, solver="iterate", solver_tol=None, monitor_lcp=False
        ),
    )
    gradient, diagnostics = parameter_gradient(bptt, x, loss_fn)
    tol = tol if tol is not None else default_tolerance(x.dtype)
    report = ReferenceReport(
        "bptt", diagnostics.residual, float("nan"), steps, 0, tol, diagnostics.residual <= tol
    )
    return gradient, report


def gradient_fidelity(
    engine: "RecurrentEngine",
    x: Tensor,
    loss_fn: LossFn,
    reference: str = "rbp",
    reference_steps: Optional[int] = None,
    reference_terms: int = 500,
    reference_tol: Optional[float] = None,
    on_unconverged: str = "warn",
) -> Dict[str, float]:
    """How close the engine's configured gradient of the cell's parameters is to the exact one,
    on input ``x`` (B, C_in, H, W) and a loss ``loss_fn(state) -> 0-d tensor``.

    Args:
        reference: ``rbp`` (the implicit gradient, fixed point and adjoint solved to
            ``reference_tol``; see :func:`exact_gradient`) or ``bptt`` (autograd through
            ``reference_steps`` plain steps, default max(4 N, 500)).
        reference_steps: the fixed-point budget (rbp) or the unrolled steps (bptt).
        reference_terms: the adjoint's budget of vector-Jacobian products (rbp).
        reference_tol: the residual the reference must reach (default: 1e-10 in float64,
            1e-5 otherwise).
        on_unconverged: ``warn`` (RuntimeWarning, the numbers are still returned with
            ``reference_converged`` 0) or ``error`` (:class:`UnconvergedReferenceError`).

    Returns:
        ``grad_cosine``, ``grad_relative_error`` (see :func:`gradient_agreement`) and the
        reference's ``reference_residual``, ``reference_adjoint_residual``,
        ``reference_evaluations``, ``reference_adjoint_terms``, ``reference_converged``.
        Neither the LCP nor the loss's own parameters (e.g. a readout's) enter the comparison.
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be 'rbp' or 'bptt', got {reference!r}")
    if on_unconverged not in ON_UNCONVERGED:
        raise ValueError(f"on_unconverged must be 'warn' or 'error', got {on_unconverged!r}")
    if reference == "rbp":
        exact, report = exact_gradient(
            engine, x, loss_fn, reference_steps, reference_terms, reference_tol
        )
    else:
        steps = reference_steps or max(4 * engine.spec.steps, 500)
        exact, report = _bptt_gradient(engine, x, loss_fn, steps, reference_tol)
    if not report.converged:
        message = (
            f"gradient_fidelity: the {reference} reference did not converge (state residual "
            f"{report.state_residual:.3g}, adjoint residual {report.adjoint_residual:.3g} after "
            f"{report.evaluations} evaluations and {report.adjoint_terms} adjoint terms; "
            f"tolerance {report.tol:.3g}): the fidelity numbers are not against an exact gradient"
        )
        if on_unconverged == "error":
            raise UnconvergedReferenceError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    configured, _ = parameter_gradient(engine, x, loss_fn)
    return {**gradient_agreement(configured, exact), **report.scalars()}


def gradient_agreement(gradient: Tensor, reference: Tensor) -> Dict[str, float]:
    """{"grad_cosine", "grad_relative_error"} of two flattened gradients: the cosine of their
    angle and ||gradient - reference|| / ||reference||."""
    norm = reference.norm() * gradient.norm()
    cosine = float(gradient @ reference / norm) if norm > 0 else float("nan")
    error = float((gradient - reference).norm() / reference.norm().clamp_min(1e-300))
    return {"grad_cosine": cosine, "grad_relative_error": error}
