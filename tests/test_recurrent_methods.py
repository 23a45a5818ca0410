"""The cheaper gradients (jfb, phantom, adaptive Neumann), the relative cap, the forward solvers
and the gradient-fidelity diagnostic, against exact float64 references."""

import pytest
import torch
from helpers import (
    CELLS,
    DTYPE,
    LinearCell,
    _dense_jacobian,
    _exact_implicit_gradient,
    _flat,
    _input_for,
    _param_grads_from_vector,
    _rel_err,
)

from crbp_d2.recurrent import HGRUCell, RecurrentEngine, neumann_series
from crbp_d2.recurrent.base import state_like, state_parts
from crbp_d2.recurrent.engine import gradient_agreement
from crbp_d2.recurrent.neumann import NeumannStats
from crbp_d2.recurrent.solvers import anderson, iterate

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")


def _cell_and_input(name):
    if name == "linear":
        return LinearCell(5), torch.randn(2, 5, 1, 1, dtype=DTYPE)
    cell = CELLS[name]()
    return cell, _input_for(cell)


def _grads(cell, engine, x, weights):
    x = x.detach().requires_grad_()
    cell.zero_grad()
    out = engine(x)
    loss = sum((w * p).sum() for w, p in zip(weights, state_parts(out.state)))
    loss.backward()
    return [p.grad.clone() for p in cell.parameters()] + [x.grad.clone()], out


@pytest.mark.parametrize("name", ["linear", "hgru", "convlstm"])
def test_jfb_is_the_zero_term_neumann_sum(name):
    cell, x = _cell_and_input(name)
    steps = 7
    with torch.no_grad():
        h_prev = RecurrentEngine(cell, steps=steps - 1, method="rbp")(x).state
    weights = [torch.randn_like(p) for p in state_parts(h_prev)]
    exact = _param_grads_from_vector(cell, cell.prepare, x, h_prev, _flat(weights))
    got, out = _grads(cell, RecurrentEngine(cell, steps=steps, method="jfb"), x, weights)
    assert _rel_err(got, exact) < 1e-10
    assert out.lcp is None and out.diagnostics.neumann_terms is None
    assert out.diagnostics.forward_evaluations == steps
    with_lcp = RecurrentEngine(cell, steps=steps, method="cjfb")(x)
    assert with_lcp.lcp is not None and with_lcp.lcp.requires_grad


@pytest.mark.parametrize("name", ["linear", "hgru", "convlstm"])
def test_phantom_equals_the_autograd_gradient_of_its_damped_unroll(name):
    cell, x = _cell_and_input(name)
    steps, k, lam = 8, 3, 0.4
    engine = RecurrentEngine(
        cell, steps=steps, method="phantom", phantom_steps=k, phantom_damping=lam
    )
    with torch.no_grad():
        start = RecurrentEngine(cell, steps=steps - k, method="rbp")(x).state
    weights = [torch.randn_like(p) for p in state_parts(start)]
    xg = x.detach().requires_grad_()
    cell.zero_grad()
    drive, state = cell.prepare(xg), start
    for _ in range(k):
        new = state_parts(cell(drive, state))
        state = state_like(
            [(1 - lam) * a + lam * b for a, b in zip(state_parts(state), new)], start
        )
    sum((w * p).sum() for w, p in zip(weights, state_parts(state))).backward()
    expected = [p.grad.clone() for p in cell.parameters()] + [xg.grad.clone()]
    got, out = _grads(cell, engine, x, weights)
    assert _rel_err(got, expected) < 1e-12
    for a, b in zip(state_parts(out.state), state_parts(state)):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    assert out.diagnostics.forward_evaluations == steps


def test_adaptive_neumann_stops_at_the_tolerance_and_is_that_partial_sum():
    cell, x = LinearCell(5, spectral_radius=0.5), torch.randn(2, 5, 1, 1, dtype=DTYPE)
    steps = 9
    with torch.no_grad():
        h_prev = RecurrentEngine(cell, steps=steps - 1, method="rbp")(x).state
    weights = [torch.randn_like(h_prev)]
    jac = _dense_jacobian(cell, cell.prepare(x).detach(), h_prev)
    g0 = _flat(weights)
    term, partial, used = g0.clone(), g0.clone(), 0
    for _ in range(40):  # the first k with ||(J^T)^k g0|| <= tol ||g0|| ends the series
        term = jac.T @ term
        partial, used = partial + term, used + 1
        if term.norm() <= 1e-3 * g0.norm():
            break
    assert 3 < used < 40
    exact = _param_grads_from_vector(cell, cell.prepare, x, h_prev, partial)
    engine = RecurrentEngine(cell, steps=steps, method="rbp", neumann_steps=40, neumann_tol=1e-3)
    got, out = _grads(cell, engine, x, weights)
    assert _rel_err(got, exact) < 1e-10
    assert out.diagnostics.neumann_terms == used


def test_relative_cap_is_invariant_to_scaling_the_loss():
    g0 = (torch.tensor([0.5, -0.2], dtype=DTYPE),)

    def vjp(v):
        return (torch.tensor([[0.7, 0.2], [-0.1, 0.8]], dtype=DTYPE).T @ v[0],)

    scale = 2.0**16
    for cap in ("pathfinder", "detectron2"):
        plain_stats, scaled_stats = NeumannStats(), NeumannStats()
        plain = neumann_series(vjp, g0, 12, cap, 3.0, plain_stats, cap_relative=True)[0]
        scaled = neumann_series(
            vjp, (g0[0] * scale,), 12, cap, 3.0, scaled_stats, cap_relative=True
        )[0]
        torch.testing.assert_close(scaled / scale, plain, rtol=0, atol=0)
        assert plain_stats.terms_used == scaled_stats.terms_used >= 8 and plain_stats.cap_fired
        # the authors' absolute bound decides differently once the loss is scaled
        absolute_stats = NeumannStats()
        absolute = neumann_series(vjp, (g0[0] * scale,), 12, cap, 3.0, absolute_stats)[0]
        assert absolute_stats.terms_used != plain_stats.terms_used
        assert not torch.allclose(absolute / scale, plain)


def test_rbp_under_float16_loss_scaling_gives_the_unscaled_gradient():
    """What a GradScaler does: multiply the loss by 2^16, compute in float16, divide the gradient
    by 2^16. With the relative cap the Neumann series takes the same decisions as without the
    scale and the gradient matches the float64 one; the absolute cap decides otherwise."""
    torch.manual_seed(0)
    cell64 = LinearCell(6, spectral_radius=0.6)
    cell16 = LinearCell(6).to(torch.float16)
    cell16.load_state_dict({k: v.half() for k, v in cell64.state_dict().items()})
    x = torch.randn(2, 6, 1, 1, dtype=DTYPE)
    settings = dict(neumann_steps=10, norm_cap="pathfinder", cap_threshold=2.0)

    def gradient(cell, dtype, scale, relative):
        engine = RecurrentEngine(cell, 8, "rbp", cap_relative=relative, **settings)
        cell.zero_grad()
        out = engine(x.to(dtype))
        (out.state.float().sum() * 1e-3 * scale).backward()  # per-element gradient 65 at 2^16
        grads = [p.grad.double() / scale for p in cell.parameters()]
        return grads, out.diagnostics.neumann_terms

    exact, exact_terms = gradient(cell64, DTYPE, 1.0, True)
    scaled, scaled_terms = gradient(cell16, torch.float16, 2.0**16, True)
    assert scaled_terms == exact_terms >= 2
    assert _rel_err(scaled, exact) < 5e-3
    _, absolute_terms = gradient(cell16, torch.float16, 2.0**16, False)
    assert absolute_terms != exact_terms


def test_the_neumann_sum_is_accumulated_in_float32():
    """bfloat16 terms of a slowly shrinking series: a bfloat16 running sum stalls at 256, where
    its resolution (2) is more than twice the terms; the float32 sum goes on to ~630."""
    factor = torch.tensor(0.999, dtype=torch.bfloat16)
    term, expected, naive = (
        torch.ones(1, dtype=torch.bfloat16),
        1.0,
        torch.ones(1, dtype=torch.bfloat16),
    )
    for _ in range(1000):
        term = term * factor
        expected += float(term)
        naive = naive + term
    out = neumann_series(lambda v: (v[0] * factor,), (torch.ones(1, dtype=torch.bfloat16),), 1000)
    assert out[0].dtype == torch.bfloat16 and float(naive) <= 260
    assert abs(float(out[0]) - expected) <= 4  # the bfloat16 resolution near 630


def test_saved_bytes_are_constant_in_steps_for_jfb():
    from crbp_d2.utils.bench import SavedStorageBytes

    cell = HGRUCell(channels=4, kernel_size=3)
    x = torch.rand(1, 4, 12, 12)
    saved = []
    for steps in (5, 20, 60):
        with SavedStorageBytes().counting() as counter:
            out = RecurrentEngine(cell, steps, "cjfb")(x)
            (out.state.sum() + out.lcp).backward()
        saved.append(counter.total)
    assert saved[0] == saved[1] == saved[2]


def _contraction(n=6, radius=0.8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=DTYPE, generator=generator)
    a = a * (radius / torch.linalg.eigvals(a).abs().max())
    b = torch.randn(2, n, dtype=DTYPE, generator=generator)
    return lambda h: torch.tanh(h @ a.T + b), torch.zeros(2, n, dtype=DTYPE)


def test_anderson_reaches_the_fixed_point_of_iteration_with_fewer_evaluations():
    step, h0 = _contraction()
    reference, _ = iterate(step, h0, 2000)
    state, stats = anderson(step, h0, budget=200, tol=1e-10, window=5)
    assert stats.converged and not stats.fell_back
    assert (state - reference).abs().max() < 1e-6
    plain, plain_stats = iterate(step, h0, 200, tol=1e-10)
    assert stats.evaluations < plain_stats.evaluations


def test_anderson_falls_back_to_iteration_when_its_residual_grows():
    step, h0 = _contraction()
    calls = {"n": 0}

    def unstable(h):  # the first extrapolated iterate lands where the map blows up
        calls["n"] += 1
        return step(h) * (1e6 if calls["n"] == 3 else 1.0)

    state, stats = anderson(unstable, h0, budget=300, tol=1e-10, window=3)
    reference, _ = iterate(step, h0, 2000)
    assert stats.fell_back and stats.converged and stats.evaluations <= 300
    assert (state - reference).abs().max() < 1e-6


def test_engine_with_anderson_keeps_the_tracked_step_and_reports_evaluations():
    cell, x = _cell_and_input("hgru_d2")
    spec = dict(steps=300, method="rbp", neumann_steps=300, neumann_tol=1e-14, solver_tol=1e-12)
    plain = RecurrentEngine(cell, **spec)
    fast = RecurrentEngine(cell, solver="anderson", anderson_window=5, **spec)
    weights = [torch.randn(x.shape[0], cell.hidden_channels, *x.shape[2:], dtype=DTYPE)]
    exact = _exact_implicit_gradient(cell, cell.prepare, x, weights)
    plain_grads, out_plain = _grads(cell, plain, x, weights)
    got, out_fast = _grads(cell, fast, x, weights)
    # both solve to 1e-12: measured 7e-12 (anderson) and 1.2e-11 (plain) relative to the dense
    # implicit gradient; 1e-9 leaves a margin of ~100
    assert _rel_err(got, exact) < 1e-9 and _rel_err(plain_grads, exact) < 1e-9
    evaluations = out_fast.diagnostics.forward_evaluations
    assert evaluations < out_plain.diagnostics.forward_evaluations <= 300
    assert out_fast.diagnostics.scalars()["forward_evaluations"] == evaluations


def test_gradient_fidelity_is_exact_for_converged_rbp_and_below_one_for_jfb():
    cell, x = _cell_and_input("hgru_d2")
    weights = torch.randn(x.shape[0], cell.hidden_channels, *x.shape[2:], dtype=DTYPE)

    def loss_fn(state):
        return (state * weights).sum()

    # the exact gradient from a dense Jacobian at the fixed point, not from the engine's RBP
    dense = _exact_implicit_gradient(cell, cell.prepare, x, [weights])[:-1]  # parameters only
    dense = torch.cat([g.reshape(-1) for g in dense])
    exact = RecurrentEngine(cell, 400, "rbp", neumann_steps=300)
    fidelity = exact.gradient_fidelity(x, loss_fn)
    assert fidelity["grad_cosine"] > 1 - 1e-9 and fidelity["grad_relative_error"] < 1e-5
    assert fidelity["reference_residual"] < 1e-10
    jfb_engine = RecurrentEngine(cell, 400, "jfb")
    jfb = jfb_engine.gradient_fidelity(x, loss_fn)
    jfb_gradient, _ = jfb_engine.parameter_gradient(x, loss_fn)
    want = gradient_agreement(jfb_gradient, dense)
    assert jfb["grad_cosine"] == pytest.approx(want["grad_cosine"], abs=1e-9)
    assert jfb["grad_relative_error"] == pytest.approx(want["grad_relative_error"], rel=1e-6)
    assert jfb["grad_cosine"] < 0.9999 and jfb["grad_relative_error"] > 1e-3
    bptt = RecurrentEngine(cell, 400, "jfb").gradient_fidelity(x, loss_fn, reference="bptt")
    assert bptt["grad_cosine"] == pytest.approx(jfb["grad_cosine"], abs=1e-6)
    with pytest.raises(ValueError, match="reference must be 'rbp' or 'bptt'"):
        exact.gradient_fidelity(x, loss_fn, reference="broyden")
