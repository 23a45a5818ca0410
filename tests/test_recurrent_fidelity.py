"""The gradient-fidelity reference, Anderson's fallback flag and the solver at inference, against
exact float64 references (dense Jacobians)."""

import pytest
import torch
from test_recurrent_gradients import (
    DTYPE,
    LinearCell,
    _dense_jacobian,
    _flat,
    _param_grads_from_vector,
)

from crbp_d2.recurrent import RecurrentEngine
from crbp_d2.recurrent.fidelity import (
    UnconvergedReferenceError,
    exact_gradient,
    gradient_agreement,
    parameter_gradient,
)
from crbp_d2.recurrent.solvers import anderson


def _slow_linear_case(radius=0.985):
    """A linear cell contracting slowly (the authors' gate init without the log reaches
    0.985 on the mask-head hGRU), a nonlinear loss and the exact dense float64 gradient."""
    torch.manual_seed(0)
    cell = LinearCell(6, spectral_radius=radius)
    x = torch.randn(3, 6, 1, 1, dtype=DTYPE)
    weights = torch.randn(3, 6, 1, 1, dtype=DTYPE)

    def loss_fn(state):
        return (weights * state).sum() + 0.1 * (state**2).sum()

    a, drive = cell.a.detach(), cell.prepare(x).detach()
    rhs = (drive[..., 0, 0] @ cell.b.detach().T).T
    h_star = torch.linalg.solve(torch.eye(6, dtype=DTYPE) - a, rhs).T[..., None, None]
    jac = _dense_jacobian(cell, drive, h_star)
    assert torch.linalg.eigvals(jac).abs().max() == pytest.approx(radius, abs=1e-9)
    g0 = _flat([weights + 0.2 * h_star])
    adjoint = torch.linalg.solve(torch.eye(jac.shape[0], dtype=DTYPE) - jac.T, g0)
    exact = _param_grads_from_vector(cell, cell.prepare, x, h_star, adjoint)[:-1]  # drop x
    return cell, x, loss_fn, torch.cat([g.reshape(-1) for g in exact])


def test_the_reference_converges_on_a_slowly_contracting_cell():
    cell, x, loss_fn, exact = _slow_linear_case()
    engine = RecurrentEngine(cell, steps=20, method="rbp")
    gradient, report = exact_gradient(engine, x, loss_fn)
    assert report.converged and report.state_residual <= 1e-10
    assert report.adjoint_residual <= 1e-10 and report.adjoint_terms > 0
    assert float((gradient - exact).norm() / exact.norm()) < 1e-8


@pytest.mark.parametrize("method", ["jfb", "rbp"])
def test_reported_fidelity_is_the_agreement_with_the_exact_gradient(method):
    cell, x, loss_fn, exact = _slow_linear_case()
    engine = RecurrentEngine(cell, steps=20, method=method, neumann_steps=15)
    truth = gradient_agreement(parameter_gradient(engine, x, loss_fn)[0], exact)
    reported = engine.gradient_fidelity(x, loss_fn)
    assert reported["reference_converged"] == 1.0
    assert reported["grad_cosine"] == pytest.approx(truth["grad_cosine"], abs=1e-8)
    assert reported["grad_relative_error"] == pytest.approx(truth["grad_relative_error"], rel=1e-6)


def test_an_unconverged_reference_warns_or_raises():
    cell, x, loss_fn, _ = _slow_linear_case(radius=0.999)
    engine = RecurrentEngine(cell, steps=20, method="jfb")
    with pytest.warns(RuntimeWarning, match="reference did not converge"):
        report = engine.gradient_fidelity(x, loss_fn, reference_steps=3, reference_terms=3)
    assert report["reference_converged"] == 0.0 and report["reference_residual"] > 1e-10
    with pytest.raises(UnconvergedReferenceError, match="state residual"):
        engine.gradient_fidelity(x, loss_fn, reference_steps=3, on_unconverged="error")
    with pytest.raises(ValueError, match="on_unconverged must be"):
        engine.gradient_fidelity(x, loss_fn, on_unconverged="ignore")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anderson_does_not_report_a_fallback_in_a_fully_converged_solve(dtype):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, dtype=dtype, generator=generator)
    a = a * (0.8 / torch.linalg.eigvals(a).abs().max())
    b = torch.randn(2, 6, dtype=dtype, generator=generator)
    _, stats = anderson(lambda h: torch.tanh(h @ a.T + b), torch.zeros(2, 6, dtype=dtype), 200)
    assert not stats.fell_back and stats.residual < 1e-5
    constant = torch.randn(2, 6, dtype=dtype, generator=generator)
    state, stats = anderson(lambda h: constant + 0 * h, torch.zeros(2, 6, dtype=dtype), 20)
    assert not stats.fell_back and stats.converged and stats.evaluations == 2
    assert torch.equal(state, constant)


def test_inference_uses_the_configured_solver():
    torch.manual_seed(1)
    cell = LinearCell(6, spectral_radius=0.95)
    x = torch.randn(3, 6, 1, 1, dtype=DTYPE)
    plain = RecurrentEngine(cell, steps=400, method="rbp", solver_tol=1e-9).eval()
    fast = RecurrentEngine(cell, steps=400, method="rbp", solver="anderson", solver_tol=1e-9).eval()
    with torch.no_grad():
        want, got = plain(x), fast(x)
        halted = fast(x, halt_tolerance=1e-4)
    assert got.diagnostics.solver_fell_back is False and got.diagnostics.halted
    assert got.diagnostics.steps < want.diagnostics.steps <= 400
    assert got.diagnostics.forward_evaluations == got.diagnostics.steps
    assert (got.state - want.state).abs().max() < 1e-7
    assert halted.diagnostics.steps < got.diagnostics.steps and halted.diagnostics.halted
