"""LCP, constant memory, halting, spectral radius, recording and argument checks of the engine."""

import subprocess
import sys
import warnings

import pytest
import torch
from helpers import CELLS, DTYPE, LinearCell, _dense_jacobian, _input_for
from torch.func import functional_call

from crbp_d2.recurrent import (
    LCP_METHODS,
    METHODS,
    NEUMANN_METHODS,
    ConvLSTMCell,
    HGRUCell,
    MaskHeadHGRUCell,
    NonFiniteStateError,
    RecurrentEngine,
    lipschitz_penalty,
)
from crbp_d2.recurrent.base import state_parts

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")


def _prev_and_last(cell, x, steps=4):
    with torch.no_grad():
        prev = RecurrentEngine(cell, steps=steps, method="rbp")(x).state
    prev = (
        type(prev)(p.requires_grad_() for p in prev)
        if isinstance(prev, tuple)
        else prev.requires_grad_()
    )
    return prev, cell(cell.prepare(x), prev)


@pytest.mark.parametrize("name", ["linear"] + list(CELLS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_lcp_is_the_hinge_of_the_jacobian_column_sums(name, reduction):
    if name == "linear":
        cell, x = LinearCell(6, spectral_radius=0.95), torch.randn(2, 6, 1, 1, dtype=DTYPE)
    else:
        cell = CELLS[name]()
        x = _input_for(cell)
    prev, last = _prev_and_last(cell, x)
    lam = 0.05 if name != "linear" else 0.3  # low enough that the hinge is active somewhere
    penalty, fraction = lipschitz_penalty(state_parts(prev), state_parts(last), lam, reduction)
    jac = _dense_jacobian(cell, cell.prepare(x).detach(), prev)
    column_sums = jac.sum(0)
    hinge = torch.relu(column_sums - lam) ** 2
    expected = hinge.mean() if reduction == "mean" else hinge.sum()
    assert (column_sums > lam).any()
    torch.testing.assert_close(penalty, expected, rtol=1e-10, atol=1e-14)
    assert float(fraction) == pytest.approx(float((column_sums > lam).double().mean()))


def test_lcp_blockwise_is_the_sum_of_diagonal_block_penalties():
    cell = ConvLSTMCell(2, 2, kernel_size=3, implicit_state="h_only").to(DTYPE)
    x = torch.rand(1, 2, 4, 4, dtype=DTYPE)
    prev, last = _prev_and_last(cell, x)
    jac = _dense_jacobian(cell, cell.prepare(x).detach(), prev)
    n = prev[0].numel()
    lam = 0.1
    expected = sum(
        (torch.relu(block.sum(0) - lam) ** 2).mean() for block in (jac[:n, :n], jac[n:, n:])
    )
    penalty, _ = lipschitz_penalty(prev, last, lam, "mean", blockwise=True)
    torch.testing.assert_close(penalty, expected)


@pytest.mark.parametrize("name", ["hgru", "hgru_d2", "convlstm"])
def test_lcp_gradient_matches_finite_differences(name):
    """d LCP / d(theta, x) through create_graph against gradcheck's finite differences."""
    cell = CELLS[name]()
    x = _input_for(cell)
    with torch.no_grad():
        prev = RecurrentEngine(cell, steps=4, method="rbp")(x).state
    params = dict(cell.named_parameters())
    names = list(params)

    def penalty(x_in, *values):
        prev_leaf = tuple(p.detach().requires_grad_() for p in state_parts(prev))
        state = prev_leaf if isinstance(prev, tuple) else prev_leaf[0]
        overrides = dict(zip(names, values))
        drive = _call(cell, overrides, "prepare", x_in)
        last = _call(cell, overrides, "forward", drive, state)
        pen, _ = lipschitz_penalty(prev_leaf, state_parts(last), 0.05, "mean", create_graph=True)
        return pen

    x_in = x.clone().requires_grad_()
    values = [params[n].detach().clone().requires_grad_() for n in names]
    assert float(penalty(x_in, *values).detach()) > 0
    assert torch.autograd.gradcheck(penalty, (x_in, *values), eps=1e-6, atol=1e-6, rtol=1e-4)


def _call(cell, overrides, method, *args):
    """Call ``cell.<method>`` with some parameters replaced (torch.func.functional_call)."""

    class _Bound(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *a):
            return getattr(self.inner, method)(*a)

    return functional_call(_Bound(cell), {f"inner.{k}": v for k, v in overrides.items()}, args)


def test_crbp_lcp_trains_towards_contraction():
    """A few optimiser steps on the LCP alone lower it (its gradient is a descent direction)."""
    cell = MaskHeadHGRUCell(channels=4, kernel_size=3, timesteps=6, norm_groups=2)
    engine = RecurrentEngine(cell, steps=6, method="crbp", lcp_lambda=0.05)
    x = torch.rand(2, 4, 6, 6)
    optimiser = torch.optim.SGD(cell.parameters(), lr=1.0)
    first = None
    for _ in range(5):
        out = engine(x)
        optimiser.zero_grad()
        out.lcp.backward()
        optimiser.step()
        first = first if first is not None else float(out.lcp.detach())
    assert float(engine(x).lcp.detach()) < first


def _saved_bytes(engine, x):
    from crbp_d2.utils.bench import SavedStorageBytes

    with SavedStorageBytes().counting() as saved:
        out = engine(x)
        loss = engine.cell.output(out.state).sum()
        if out.lcp is not None:
            loss = loss + out.lcp
    loss.backward()
    return saved.total


@pytest.mark.parametrize("cell_name", ["hgru", "convlstm"])
def test_saved_memory_is_constant_in_steps_for_rbp_and_linear_for_bptt(cell_name):
    cell = {"hgru": lambda: HGRUCell(4, 3), "convlstm": lambda: ConvLSTMCell(4, 4, 3)}[cell_name]()
    x = torch.rand(2, 4, 8, 8)
    sizes = {}
    for method in ("rbp", "crbp", "bptt", "cbptt"):
        sizes[method] = [_saved_bytes(RecurrentEngine(cell, n, method), x) for n in (5, 20, 80)]
    assert sizes["rbp"][0] == sizes["rbp"][1] == sizes["rbp"][2] > 0
    assert sizes["crbp"][0] == sizes["crbp"][1] == sizes["crbp"][2] > sizes["rbp"][0]
    for method in ("bptt", "cbptt"):
        s5, s20, s80 = sizes[method]
        per_step = (s20 - s5) / 15
        assert per_step > 0
        assert s80 - s20 == pytest.approx(60 * per_step)  # exactly linear
    assert sizes["bptt"][2] > 10 * sizes["rbp"][2]


def test_record_states_does_not_change_the_gradient():
    for method in ("bptt", "rbp", "crbp"):
        grads = []
        for record in (False, True):
            torch.manual_seed(3)
            cell = HGRUCell(3, 3).to(DTYPE)
            x = torch.rand(2, 3, 5, 5, dtype=DTYPE, requires_grad=True)
            out = RecurrentEngine(cell, steps=6, method=method)(x, record_states=record)
            loss = out.state.sum() + (out.lcp if out.lcp is not None else 0)
            loss.backward()
            grads.append(
                torch.cat([x.grad.reshape(-1)] + [p.grad.reshape(-1) for p in cell.parameters()])
            )
            if record:
                assert len(out.states) == 6 and not out.states[-1].requires_grad
                torch.testing.assert_close(out.states[-1], out.state.detach())
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_recorded_states_are_the_plain_steps_whatever_the_solver():
    """A timecourse (record_states, no graph) is N plain steps also where inference uses
    Anderson with a tolerance or a halting tolerance (a sweep over the steps reads step t)."""
    torch.manual_seed(0)
    cell = HGRUCell(3, 3).to(DTYPE)
    x = torch.rand(2, 3, 5, 5, dtype=DTYPE)
    plain = RecurrentEngine(cell, steps=4, test_steps=9, method="crbp").eval()
    with torch.no_grad():
        reference = plain(x, record_states=True).states
        for settings in (
            dict(solver="anderson", solver_tol=1e-2),
            dict(solver_tol=1e-2),
            dict(halt_tolerance=1e-1),
        ):
            engine = RecurrentEngine(cell, steps=4, test_steps=9, method="crbp", **settings)
            out = engine.eval()(x, record_states=True)
            assert len(out.states) == 9 and out.diagnostics.steps == 9
            for got, want in zip(out.states, reference):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            assert engine(x).diagnostics.steps < 9  # without recording the settings apply
        # a halting tolerance passed to the call still stops the record
        assert len(plain(x, record_states=True, halt_tolerance=1e30).states) == 1


def test_halting_stops_at_tolerance_and_reports_steps():
    cell = LinearCell(5, spectral_radius=0.5)
    x = torch.randn(2, 5, 1, 1, dtype=DTYPE)
    engine = RecurrentEngine(
        cell, steps=5, test_steps=200, method="crbp", halt_tolerance=1e-8
    ).eval()
    with torch.no_grad():
        out = engine(x)
    assert out.diagnostics.halted and out.diagnostics.steps < 200
    assert out.diagnostics.residual < 1e-8
    with torch.no_grad():
        full = engine(x, halt_tolerance=1e-30)  # unreachable tolerance: runs all test steps
        previous = engine(x, steps=out.diagnostics.steps - 1, halt_tolerance=1e-30)
    assert full.diagnostics.steps == 200 and not full.diagnostics.halted
    assert previous.diagnostics.residual >= 1e-8 * 0.9  # it did not stop before it had to
    torch.testing.assert_close(out.state, full.state, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["linear", "hgru", "hgru_d2"])
def test_spectral_radius_matches_dense_eigenvalues(name):
    if name == "linear":
        cell, x = LinearCell(8, spectral_radius=0.8), torch.randn(1, 8, 1, 1, dtype=DTYPE)
    else:
        cell = CELLS[name]()
        x = _input_for(cell)[:1]
    engine = RecurrentEngine(cell, steps=200, method="crbp")
    with torch.no_grad():
        state = engine(x).state
    rho = engine.spectral_radius(x, state=state, iterations=400)
    jac = _dense_jacobian(cell, cell.prepare(x).detach(), state)
    exact = float(torch.linalg.eigvals(jac).abs().max())
    assert rho == pytest.approx(exact, rel=0.03)


def test_float32_and_float64_agree():
    cell64 = HGRUCell(3, 3).to(DTYPE)
    cell32 = HGRUCell(3, 3)
    cell32.load_state_dict({k: v.float() for k, v in cell64.state_dict().items()})
    x = torch.rand(2, 3, 6, 6, dtype=DTYPE)
    out64 = RecurrentEngine(cell64, 8, "crbp")(x)
    out32 = RecurrentEngine(cell32, 8, "crbp")(x.float())
    assert out32.state.dtype == torch.float32 and out64.state.dtype == torch.float64
    torch.testing.assert_close(out32.state.double(), out64.state, rtol=1e-4, atol=1e-5)


def test_deterministic_under_a_seed():
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        cell = MaskHeadHGRUCell(8, 3, timesteps=5, norm_groups=4)
        x = torch.rand(2, 8, 6, 6)
        out = RecurrentEngine(cell, 5, "crbp")(x)
        (out.state.sum() + out.lcp).backward()
        results.append(
            torch.cat([out.state.reshape(-1)] + [p.grad.reshape(-1) for p in cell.parameters()])
        )
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reports_diagnostics(method):
    cell = ConvLSTMCell(3, 3, 3)
    x = torch.rand(2, 3, 5, 5)
    out = RecurrentEngine(cell, 6, method, monitor_lcp=True)(x)
    loss = out.state[0].sum()
    if method in LCP_METHODS:
        assert out.lcp.requires_grad
        loss = loss + out.lcp
    else:  # monitored only: in the diagnostics, not handed out as a loss term
        assert out.lcp is None and out.diagnostics.lcp is not None
    seen = []
    out.after_backward(lambda diagnostics: seen.append(diagnostics.backward_scalars()))
    loss.backward()
    scalars = out.diagnostics.scalars()
    assert len(seen) == 1 and seen[0] == {
        k: v for k, v in scalars.items() if k.startswith("neumann")
    }
    assert scalars["steps"] == 6
    # the residual by hand: ||F(h) - h|| / ||F(h)|| at the last evaluation F(h), from h0 = 0
    # (phantom methods: their last phantom_steps updates damped, h <- (1 - lam) h + lam F(h))
    spec = RecurrentEngine(cell, 6, method).spec
    damped = method in ("phantom", "cphantom")
    with torch.no_grad():
        drive = cell.prepare(x)
        h = tuple(torch.zeros_like(p) for p in cell.init_state(drive))
        for t in range(6):
            previous, new = h, cell(drive, h)
            lam = spec.phantom_damping if damped and t >= 6 - min(spec.phantom_steps, 6) else 1.0
            h = tuple((1 - lam) * a + lam * b for a, b in zip(previous, new))
        diff = torch.cat([(b - a).reshape(-1) for a, b in zip(previous, new)]).norm()
        residual = float(diff / torch.cat([b.reshape(-1) for b in new]).norm())
    # measured rel. difference 6.8e-8 (float32 norms summed in another order); tolerance 1e-5
    assert scalars["residual"] == pytest.approx(residual, rel=1e-5)
    # the fraction's value against a dense Jacobian: test_recurrent_lcp_exact.py
    if method in NEUMANN_METHODS:
        assert scalars["neumann_terms"] == 15 and scalars["neumann_cap_fired"] == 0.0
    else:
        assert "neumann_terms" not in scalars


def test_gala_free_and_less_softplus_variants_run():
    for kwargs in ({"gala": False}, {"less_softplus": False}, {"nonlinearity": "tanh"}):
        cell = MaskHeadHGRUCell(8, 3, norm_groups=4, **kwargs)
        out = RecurrentEngine(cell, 4, "crbp")(torch.rand(1, 8, 5, 5))
        (out.state.sum() + out.lcp).backward()
        assert all(p.grad is not None for p in cell.parameters())


def test_chronos_log_switch():
    torch.manual_seed(0)
    intended = HGRUCell(25, 3, chronos_log=True)
    torch.manual_seed(0)
    authors = HGRUCell(25, 3, chronos_log=False)
    assert (
        1.0 <= float(authors.gate_inh.bias.detach().min())
        and float(authors.gate_inh.bias.detach().max()) <= 7.0
    )
    torch.testing.assert_close(intended.gate_inh.bias, authors.gate_inh.bias.log())
    torch.testing.assert_close(intended.gate_exc.bias, -intended.gate_inh.bias)


def test_d2_cell_parameter_count_matches_the_paper_head():
    """hGRU (GALA, 2 GN) + a 256-channel BN readout = 1,576,768 (the authors' R-FPN head)."""
    cell = MaskHeadHGRUCell(256, 3, timesteps=20)
    readout_norm = 2 * 256
    assert sum(p.numel() for p in cell.parameters()) + readout_norm == 1_576_768


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps = 0: must be an integer >= 1"),
        ({"steps": 5, "method": "bpttt"}, "method = 'bpttt': unknown value"),
        ({"steps": 5, "neumann_steps": 0}, "neumann_steps = 0: must be an integer >= 1"),
        ({"steps": 5, "lcp_lambda": 1.0}, "lcp_lambda = 1.0: must be in [0, 1)"),
        ({"steps": 5, "lcp_lambda": -0.1}, "lcp_lambda = -0.1: must be in [0, 1)"),
        ({"steps": 5, "norm_cap": "always"}, "norm_cap = 'always': unknown value"),
        ({"steps": 5, "lcp_reduction": "max"}, "lcp_reduction = 'max': unknown value"),
        ({"steps": 5, "test_steps": -1}, "test_steps = -1: must be an integer >= 1"),
        ({"steps": 5, "halt_tolerance": 0.0}, "halt_tolerance = 0.0: must be a number > 0"),
        ({"steps": 5, "neumann_tol": -1e-3}, "neumann_tol = -0.001: must be a number > 0"),
        ({"steps": 5, "anderson_window": 0}, "anderson_window = 0: must be an integer >= 1"),
        ({"steps": 5, "anderson_damping": 1.5}, "anderson_damping = 1.5: must be in (0, 1]"),
        ({"steps": 5, "phantom_damping": 0.0}, "phantom_damping = 0.0: must be in (0, 1]"),
        ({"steps": 5, "solver": "broyden"}, "solver = 'broyden': unknown value"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs, message):
    with pytest.raises(ValueError) as info:
        RecurrentEngine(HGRUCell(2, 3), **kwargs)
    assert message in str(info.value)


def test_bad_call_arguments():
    engine = RecurrentEngine(HGRUCell(2, 3), 3)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got -2"):
        engine(torch.rand(1, 2, 4, 4), steps=-2)
    with pytest.raises(ValueError, match="cannot be used inside a recurrent cell"):
        MaskHeadHGRUCell(8, 3, norm="SyncBN")
    with pytest.raises(ValueError, match="unknown nonlinearity 'gelu'"):
        MaskHeadHGRUCell(8, 3, norm_groups=4, nonlinearity="gelu")


def test_core_does_not_import_detectron2_or_pathfinder():
    code = (
        "import sys, crbp_d2.recurrent; "
        "bad = [m for m in sys.modules if (m.startswith('detectron2') and m != 'detectron2._C')"
        " or m.startswith('crbp_d2.pathfinder')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _BlowsUpAtStep(torch.nn.Module):
    """h_t = t (a number per step) until step ``at``, where it becomes inf."""

    hidden_channels = 2

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.scale = torch.nn.Parameter(torch.ones(()))

    def prepare(self, x):
        return x

    def init_state(self, drive):
        return torch.zeros_like(drive)

    def output(self, state):
        return state

    def forward(self, drive, state):
        new = state + self.scale * torch.ones_like(state)
        return torch.where(new >= self.at, torch.full_like(new, float("inf")), new)


def test_a_non_finite_state_stops_with_the_step_and_the_method():
    x = torch.zeros(1, 2, 3, 3)
    with pytest.raises(
        NonFiniteStateError, match="crbp: the recurrent state became non-finite at step 4 of 6"
    ):
        RecurrentEngine(_BlowsUpAtStep(4), 6, "crbp")(x)
    with pytest.raises(NonFiniteStateError, match="at step 4 of 6"), torch.no_grad():
        RecurrentEngine(_BlowsUpAtStep(4), 6, "bptt").eval()(x)
    with pytest.warns(
        RuntimeWarning, match="bptt: the recurrent state became non-finite at step 4"
    ):
        out = RecurrentEngine(_BlowsUpAtStep(4), 6, "bptt", nonfinite="warn")(x)
    assert out.diagnostics.nonfinite_step == 4


def test_an_unconverged_state_is_flagged_and_warned_about_once():
    cell = HGRUCell(channels=3, kernel_size=3)
    x = torch.rand(1, 3, 6, 6)
    engine = RecurrentEngine(cell, 2, "rbp", convergence_tol=1e-9)
    with pytest.warns(RuntimeWarning, match="rbp: the state has not converged after 2 steps"):
        out = engine(x)
    assert out.diagnostics.converged is False and out.diagnostics.scalars()["converged"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per engine
        engine(x)
        RecurrentEngine(cell, 2, "bptt", convergence_tol=1e-9)(x)  # BPTT needs no fixed point
    assert RecurrentEngine(cell, 2, "rbp", convergence_tol=10.0)(x).diagnostics.converged


@pytest.mark.parametrize("method", METHODS)
def test_nothing_of_a_step_outlives_its_backward(method):
    """The after-backward hook holds no reference back to the output: once the output is gone,
    its state is freed (a cycle through the autograd graph leaked every training step)."""
    import weakref

    cell = MaskHeadHGRUCell(channels=4, kernel_size=3, timesteps=3, norm_groups=2)
    out = RecurrentEngine(cell, 3, method, neumann_steps=2)(torch.rand(2, 4, 5, 5))
    out.after_backward(lambda diagnostics: None)
    state = weakref.ref(out.state)
    (out.state.sum() + (out.lcp if out.lcp is not None else 0)).backward()
    del out
    assert state() is None


def test_authors_init_switch_matches_the_authors_mask_head_inits():
    torch.manual_seed(0)
    ours = MaskHeadHGRUCell(channels=256, kernel_size=3)
    theirs = MaskHeadHGRUCell(channels=256, kernel_size=3, authors_init=True)
    assert ours.gala_channel_in.bias.abs().max() == 0
    assert 0.03 < float(theirs.gala_channel_in.bias.std()) < 0.042  # U(-1/16, 1/16)
    assert float(theirs.gala_spatial_in.bias.abs().max()) == 0
    no_gala = MaskHeadHGRUCell(channels=256, kernel_size=3, gala=False)
    no_gala_theirs = MaskHeadHGRUCell(channels=256, kernel_size=3, gala=False, authors_init=True)
    assert 0.08 < float(no_gala.gate_exc.weight.std()) < 0.096  # Kaiming normal sqrt(2 / 256)
    assert 0.033 < float(no_gala_theirs.gate_exc.weight.std()) < 0.039  # PyTorch default
    # with GALA the update gate is Kaiming-initialised in both codes
    assert 0.08 < float(theirs.gate_exc.weight.std()) < 0.096
