"""The recurrent core's gradients against exact float64 references (dense Jacobians, gradcheck)."""

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
from torch import nn
from torch.func import functional_call

from crbp_d2.recurrent import (
    ConvLSTMCell,
    RecurrentEngine,
    neumann_series,
)
from crbp_d2.recurrent.base import state_parts
from crbp_d2.recurrent.spec import METHODS

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")


def _fixed_point(cell, x, steps=600):
    engine = RecurrentEngine(cell, steps=steps, method="rbp")
    with torch.no_grad():
        out = engine(x)
    assert out.diagnostics.residual < 1e-12, "test cell did not converge"
    return out.state


def _rbp_grads(cell, x, steps, terms, weights):
    engine = RecurrentEngine(cell, steps=steps, method="rbp", neumann_steps=terms)
    x = x.detach().requires_grad_()
    cell.zero_grad()
    out = engine(x)
    loss = sum((w * p).sum() for w, p in zip(weights, state_parts(out.state)))
    loss.backward()
    return [p.grad.clone() for p in cell.parameters()] + [x.grad.clone()], out


@pytest.mark.parametrize("name", ["linear"] + list(CELLS))
def test_rbp_equals_exact_implicit_gradient(name):
    if name == "linear":
        cell = LinearCell(6)
        x = torch.randn(3, 6, 1, 1, dtype=DTYPE)
    else:
        cell = CELLS[name]()
        x = _input_for(cell)
    h_star = _fixed_point(cell, x)
    weights = [torch.randn_like(p) for p in state_parts(h_star)]
    jac = _dense_jacobian(cell, cell.prepare(x).detach(), h_star)
    assert torch.linalg.eigvals(jac).abs().max() < 1.0
    adjoint = torch.linalg.solve(torch.eye(jac.shape[0], dtype=DTYPE) - jac.T, _flat(weights))
    exact = _param_grads_from_vector(cell, cell.prepare, x, h_star, adjoint)
    got, _ = _rbp_grads(cell, x, steps=600, terms=400, weights=weights)
    assert _rel_err(got, exact) < 1e-6


@pytest.mark.parametrize("name", ["linear", "hgru", "convlstm"])
@pytest.mark.parametrize("terms", [1, 3, 7])
def test_rbp_with_k_terms_is_the_k_term_partial_sum(name, terms):
    if name == "linear":
        cell = LinearCell(5)
        x = torch.randn(2, 5, 1, 1, dtype=DTYPE)
    else:
        cell = CELLS[name]()
        x = _input_for(cell)
    steps = 9  # not converged on purpose: the partial sum is taken at h_{N-1}, whatever it is
    engine = RecurrentEngine(cell, steps=steps - 1, method="rbp")
    with torch.no_grad():
        h_prev = engine(x).state
    weights = [torch.randn_like(p) for p in state_parts(h_prev)]
    jac = _dense_jacobian(cell, cell.prepare(x).detach(), h_prev)
    g0 = _flat(weights)
    term, partial = g0.clone(), g0.clone()
    for _ in range(terms):
        term = jac.T @ term
        partial = partial + term
    exact = _param_grads_from_vector(cell, cell.prepare, x, h_prev, partial)
    got, out = _rbp_grads(cell, x, steps=steps, terms=terms, weights=weights)
    assert _rel_err(got, exact) < 1e-10
    assert out.diagnostics.neumann_terms == terms and out.diagnostics.cap_fired is False


@pytest.mark.parametrize("name", list(CELLS))
def test_bptt_passes_gradcheck(name):
    cell = CELLS[name]()
    engine = RecurrentEngine(cell, steps=3, method="bptt")
    x = _input_for(cell).requires_grad_()
    params = dict(cell.named_parameters())
    names = list(params)

    def run(x_in, *values):
        out = functional_call(engine, {f"cell.{n}": v for n, v in zip(names, values)}, (x_in,))
        return tuple(state_parts(out.state))

    # A few parameters keep gradcheck fast; x covers the path through every step.
    chosen = [params[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(run, (x, *chosen), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_tbptt_tracks_only_the_last_k_steps():
    cell = LinearCell(4)
    x = torch.randn(2, 4, 1, 1, dtype=DTYPE, requires_grad=True)
    engine = RecurrentEngine(cell, steps=6, method="tbptt", tbptt_steps=2)
    out = engine(x)
    out.state.sum().backward()
    a, b = cell.a.detach(), cell.b.detach()
    # h6 = A h5 + B x, h5 = A h4 + B x with h4 detached: dL/dx = 1^T (B + A B)
    ones = torch.ones(2, 4, dtype=DTYPE)
    expected = ones @ b + ones @ a @ b
    torch.testing.assert_close(x.grad[..., 0, 0], expected)


@pytest.mark.parametrize("name", ["linear", "hgru"])
def test_bptt_on_a_contraction_converges_to_the_dense_implicit_gradient(name):
    """BPTT through 120 steps against (dF/dtheta)^T (I - J^T)^-1 w from a dense Jacobian (not
    against the engine's RBP). The truncation error is ~rho^120 (rho = 0.5 for the linear cell,
    < 1e-20 for both); measured: <= 1e-15 relative, so 1e-12 leaves a margin of ~1e3."""
    torch.manual_seed(0)
    if name == "linear":
        cell, x = LinearCell(5, spectral_radius=0.5), torch.randn(2, 5, 1, 1, dtype=DTYPE)
    else:
        cell = CELLS[name]()
        x = _input_for(cell)
    with torch.no_grad():
        shape_source = cell(cell.prepare(x), cell.init_state(cell.prepare(x)))
    weights = [torch.randn_like(shape_source)]
    exact = _exact_implicit_gradient(cell, cell.prepare, x, weights)
    engine = RecurrentEngine(cell, steps=120, method="bptt")
    cell.zero_grad()
    xb = x.clone().requires_grad_()
    (engine(xb).state * weights[0]).sum().backward()
    got_bptt = [p.grad for p in cell.parameters()] + [xb.grad]
    assert _rel_err(got_bptt, exact) < 1e-12


def test_convlstm_h_only_reproduces_the_authors_block_approximation():
    torch.manual_seed(1)
    joint = ConvLSTMCell(2, 2, kernel_size=3).to(DTYPE)
    h_only = ConvLSTMCell(2, 2, kernel_size=3, implicit_state="h_only").to(DTYPE)
    h_only.load_state_dict(joint.state_dict())
    x = torch.rand(1, 2, 4, 4, dtype=DTYPE)
    h_prev = RecurrentEngine(joint, steps=5, method="rbp")(x).state
    h_prev = tuple(p.detach() for p in h_prev)
    w = torch.randn_like(h_prev[0])
    jac = _dense_jacobian(joint, joint.prepare(x).detach(), h_prev)
    n = h_prev[0].numel()
    jhh = jac[:n, :n]  # d h' / d h
    g = w.reshape(-1).clone()
    term = g.clone()
    for _ in range(4):
        term = jhh.T @ term
        g = g + term
    # Gradient enters through h' only; the c' output has zero cotangent.
    adjoint = torch.cat([g, torch.zeros(n, dtype=DTYPE)])
    exact = _param_grads_from_vector(h_only, h_only.prepare, x, h_prev, adjoint)
    engine = RecurrentEngine(h_only, steps=6, method="rbp", neumann_steps=4)
    xg = x.clone().requires_grad_()
    (engine(xg).state[0] * w).sum().backward()
    got = [p.grad for p in h_only.parameters()] + [xg.grad]
    assert _rel_err(got, exact) < 1e-10


def test_norm_caps_follow_the_authors_rules():
    # J^T = 0.6 I on a 1-D state: terms 0.6^k g0, all shrinking.
    g0 = (torch.tensor([0.5], dtype=DTYPE),)

    def vjp(v):
        return (0.6 * v[0],)

    partial = lambda k: sum(0.5 * 0.6**i for i in range(k + 1))  # noqa: E731
    # No cap: plain 5-term sum.
    assert float(neumann_series(vjp, g0, 5, "none")[0]) == pytest.approx(partial(5))
    # Pathfinder: stop at the first term pushing ||g|| over 1 (0.5+0.3+0.18 = 0.98; +0.108 > 1).
    from crbp_d2.recurrent.neumann import NeumannStats

    stats = NeumannStats()
    out = neumann_series(vjp, g0, 10, "pathfinder", stats=stats)
    assert float(out[0]) == pytest.approx(partial(2)) and stats.terms_used == 2 and stats.cap_fired
    # Detectron2: a tripping term is skipped but the series goes on from it. Terms 1-2 are kept
    # (0.98), 3-6 trip, 7 is kept (0.98 + 0.5*0.6**7), 8 trips, 9 is kept, 10 trips: the sum
    # saved at the last trip (before term 10) is returned.
    stats = NeumannStats()
    out = neumann_series(vjp, g0, 10, "detectron2", stats=stats)
    expected = partial(2) + 0.5 * 0.6**7 + 0.5 * 0.6**9
    assert float(out[0]) == pytest.approx(expected) and stats.cap_fired and stats.terms_used == 4

    # A series that trips once and then recovers: the two caps differ.
    scales = iter([2.0, 0.1, 0.1, 0.1])

    def bumpy(v):
        return (next(scales) * v[0],)

    g0 = (torch.tensor([0.1], dtype=DTYPE),)
    pathfinder = neumann_series(bumpy, g0, 4, "pathfinder")[0]
    assert float(pathfinder) == pytest.approx(0.1)  # first term grows: nothing added
    scales = iter([2.0, 0.1, 0.1, 0.1])
    d2 = neumann_series(bumpy, g0, 4, "detectron2")[0]
    # D2 skips the 0.2 term but continues from it: 0.1 + 0.02 + 0.002 + 0.0002, then returns the
    # sum saved at the (only) trip, which is 0.1.
    assert float(d2) == pytest.approx(0.1)


# -- the cell contract: forward(drive, state) is all a cell needs ----------------------------
class PlainCell(nn.Module):
    """A bare ``nn.Module``: only ``forward(drive, state)``; no ``hidden_channels``,
    ``prepare``, ``init_state`` or ``output``. F(x, h) = tanh(A h + b * x), a contraction
    (||A||_2 = 0.6 and tanh is 1-Lipschitz); the state is shaped like the drive."""

    def __init__(self, n: int, dtype=DTYPE) -> None:
        super().__init__()
        a = torch.randn(n, n, dtype=dtype)
        self.a = nn.Parameter(0.6 * a / torch.linalg.matrix_norm(a, ord=2))
        self.b = nn.Parameter(torch.randn(n, dtype=dtype))

    def forward(self, drive, state):
        mixed = torch.einsum("ij,bjhw->bihw", self.a, state)
        return torch.tanh(mixed + self.b[None, :, None, None] * drive)


@pytest.mark.parametrize("method", METHODS)
def test_a_plain_module_is_a_cell_for_every_method(method):
    cell = PlainCell(3, dtype=torch.float32)
    assert not hasattr(cell, "hidden_channels") and not hasattr(cell, "init_state")
    engine = RecurrentEngine(cell, steps=8, method=method, tbptt_steps=3)
    out = engine(torch.rand(2, 3, 4, 4))
    assert out.state.shape == (2, 3, 4, 4)
    loss = out.state.square().sum() + (out.lcp if out.lcp is not None else 0.0)
    loss.backward()
    for name, parameter in cell.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert (out.lcp is not None) == engine.uses_lcp
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad():  # inference and the monitoring helpers need nothing more either
        assert engine.eval()(torch.rand(1, 3, 4, 4)).state.shape == (1, 3, 4, 4)
        rho = engine.spectral_radius(x, iterations=400)
        state = torch.zeros_like(x)  # the state it is taken at: test_steps steps from h0 = 0
        for _ in range(engine.test_steps):
            state = cell(x, state)
    jacobian = torch.autograd.functional.jacobian(lambda h: cell(x, h), state).reshape(48, 48)
    exact = float(torch.linalg.eigvals(jacobian.double()).abs().max())
    # power iteration vs dense eigenvalues: measured rel. error <= 2.4e-3 over seeds 0-4; the
    # tolerance of test_recurrent_engine.py::test_spectral_radius_matches_dense_eigenvalues
    assert rho == pytest.approx(exact, rel=0.03)
    assert len(list(engine.iterate(torch.rand(1, 3, 4, 4), 2))) == 3


def test_a_plain_module_cell_gets_the_exact_implicit_gradient():
    cell = PlainCell(3)
    x = torch.randn(2, 3, 2, 2, dtype=DTYPE)
    h_star = _fixed_point(cell, x)
    weights = [torch.randn_like(h_star)]
    jac = _dense_jacobian(cell, x, h_star)  # prepare defaults to the identity
    adjoint = torch.linalg.solve(torch.eye(jac.shape[0], dtype=DTYPE) - jac.T, _flat(weights))
    exact = _param_grads_from_vector(cell, lambda v: v, x, h_star, adjoint)
    got, out = _rbp_grads(cell, x, steps=600, terms=400, weights=weights)
    assert _rel_err(got, exact) < 1e-8
    # crbp's gradient of the task loss is the same (the LCP only adds its own term).
    for method in ("crbp", "cbptt", "tbptt", "bptt"):
        engine = RecurrentEngine(cell, steps=600, method=method, neumann_steps=400)
        xg = x.detach().requires_grad_()
        cell.zero_grad()
        (weights[0] * engine(xg).state).sum().backward()
        grads = [p.grad.clone() for p in cell.parameters()] + [xg.grad.clone()]
        # tbptt keeps 300 of the 600 steps: its truncation error is ~0.6^300, far below float64
        # rounding. Measured (seeds 0-2): <= 4e-16 relative for every method; 1e-12 leaves a
        # margin of ~1e3.
        assert _rel_err(grads, exact) < 1e-12, method


def test_cell_softplus_matches_torch_in_value_gradient_and_second_derivative():
    """The cells' softplus (faster on CPU) against ``F.softplus`` in float64, on both sides of
    its threshold (20) and at 0, where an |x|-based formula would get the derivative wrong."""
    from crbp_d2.recurrent.base import softplus

    x = torch.cat([torch.linspace(-40, 40, 801, dtype=DTYPE), torch.zeros(1, dtype=DTYPE)])
    x.requires_grad_(True)
    ours, theirs = softplus(x), nn.functional.softplus(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-15)
    (d_ours,) = torch.autograd.grad(ours.sum(), x, create_graph=True)
    (d_theirs,) = torch.autograd.grad(theirs.sum(), x, create_graph=True)
    torch.testing.assert_close(d_ours, d_theirs, rtol=1e-12, atol=1e-15)
    assert d_ours[-1].item() == 0.5
    (dd_ours,) = torch.autograd.grad(d_ours.sum(), x)
    (dd_theirs,) = torch.autograd.grad(d_theirs.sum(), x)
    # (at x = 20 torch gives 0, the true value is 2e-9)
    torch.testing.assert_close(dd_ours, dd_theirs, rtol=1e-10, atol=1e-8)
    assert torch.autograd.gradgradcheck(softplus, (x[1::40].detach().clone().requires_grad_(),))
    half = torch.linspace(-30, 30, 61, dtype=torch.float16)
    torch.testing.assert_close(softplus(half), nn.functional.softplus(half.float()).half())


def test_cell_softplus_saves_for_backward_what_torch_softplus_saves():
    """The memory benchmarks count saved tensors: the faster softplus must not add any."""
    from crbp_d2.recurrent.base import softplus
    from crbp_d2.utils.bench import SavedStorageBytes

    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    counts = []
    for function in (softplus, nn.functional.softplus):
        with SavedStorageBytes().counting() as saved:
            function(x * 2).sum().backward()
        counts.append(saved.total)
    assert counts[0] == counts[1] == x.numel() * x.element_size()  # its input, nothing else
    counts = []  # and through a create_graph VJP, as the LCP differentiates it
    for function in (softplus, nn.functional.softplus):
        with SavedStorageBytes().counting() as saved:
            (vjp,) = torch.autograd.grad(function(x * 2).sum(), x, create_graph=True)
            vjp.pow(2).sum().backward()
        counts.append(saved.total)
    assert counts[0] == counts[1]
