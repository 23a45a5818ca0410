"""The penalised methods through the engine against dense float64 references built from the cell
alone (torch.autograd.functional.jacobian), never from the engine's own RBP / LCP code:

- ``out.lcp`` (the value the engine hands out) and its gradient with respect to the cell's
  parameters and the input, for every method that trains the LCP (cbptt, crbp, cjfb, cphantom);
- the whole training gradient (task loss + LCP) of cjfb and cphantom.

The reference unrolls the cell in a plain Python loop as each method defines it (bptt: every step
tracked; crbp / cjfb: h_{N-1} reached without a graph; cphantom: N - k plain steps, then k damped
steps h <- (1 - lam) h + lam F(h)), forms the dense Jacobian J = dF/dh at the state the last cell
evaluation starts from (with ``create_graph=True``, so the penalty stays differentiable through
J and, under bptt / phantom, through that state), and takes
LCP = mean(relu(1^T J - lambda)^2).
"""

import pytest
import torch
from helpers import CELLS, DTYPE, LinearCell, _flat, _input_for, _unflat

from crbp_d2.recurrent import LCP_METHODS, RecurrentEngine
from crbp_d2.recurrent.base import state_parts

STEPS, PHANTOM_STEPS, PHANTOM_DAMPING = 5, 3, 0.4
LCP_LAMBDA = 0.05  # low enough that the hinge is active on every test cell


def _cell_and_input(name):
    torch.manual_seed(0)
    if name == "linear":
        return LinearCell(5, spectral_radius=0.95), torch.randn(2, 5, 1, 1, dtype=DTYPE)
    cell = CELLS[name]()
    return cell, _input_for(cell)


def _rebuild(flat, like):
    parts = _unflat(flat, state_parts(like))
    return type(like)(parts) if isinstance(like, tuple) else parts[0]


def _dense_lcp(cell, drive, previous, fractions=None):
    """mean(relu(column sums of dF/dh at ``previous``) - lambda)^2), differentiable; appends the
    fraction of column sums above lambda to ``fractions`` if given."""
    flat = _flat(state_parts(previous))

    def step(vector):
        return _flat(state_parts(cell(drive, _rebuild(vector, previous))))

    jacobian = torch.autograd.functional.jacobian(step, flat, create_graph=True)
    column_sums = jacobian.sum(0)
    if fractions is not None:
        fractions.append(float((column_sums > LCP_LAMBDA).double().mean()))
    return (torch.relu(column_sums - LCP_LAMBDA) ** 2).mean()


def _reference(cell, x, method, weights, fractions=None):
    """(state, lcp) of ``method`` computed by hand from the cell, on a leaf copy of ``x``."""
    drive = cell.prepare(x)
    state = cell.init_state(drive)  # h_0 = 0
    if method == "cbptt":
        free, tracked, damping = 0, STEPS, 1.0
    elif method == "cphantom":
        free, tracked, damping = STEPS - PHANTOM_STEPS, PHANTOM_STEPS, PHANTOM_DAMPING
    else:  # crbp, cjfb: one tracked step from the detached h_{N-1}
        free, tracked, damping = STEPS - 1, 1, 1.0
    with torch.no_grad():
        for _ in range(free):
            state = cell(drive, state)
    for t in range(tracked):
        if t == tracked - 1:
            lcp = _dense_lcp(cell, drive, state, fractions)
        new = cell(drive, state)
        mixed = [
            (1 - damping) * a + damping * b for a, b in zip(state_parts(state), state_parts(new))
        ]
        state = type(new)(mixed) if isinstance(new, tuple) else mixed[0]
    task = sum((w * p).sum() for w, p in zip(weights, state_parts(state)))
    return task, lcp


def _engine(cell, method):
    return RecurrentEngine(
        cell,
        steps=STEPS,
        method=method,
        lcp_lambda=LCP_LAMBDA,
        phantom_steps=PHANTOM_STEPS,
        phantom_damping=PHANTOM_DAMPING,
    )


def _gradients(cell, x, compute):
    """Gradients of ``compute(x_leaf)`` (a 0-d tensor) for the cell's parameters and the input."""
    x = x.detach().requires_grad_()
    value = compute(x)
    params = list(cell.parameters())
    grads = torch.autograd.grad(value, params + [x], allow_unused=True)
    return value.detach(), [
        torch.zeros_like(p) if g is None else g for p, g in zip(params + [x], grads)
    ]


def _rel_err(got, want):
    got, want = _flat(got), _flat(want)
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("name", ["linear", "hgru", "hgru_gn", "convlstm"])
@pytest.mark.parametrize("method", LCP_METHODS)
def test_engine_lcp_value_and_gradient_match_a_dense_jacobian(name, method):
    cell, x = _cell_and_input(name)
    fractions, outputs = [], []
    want_value, want = _gradients(
        cell, x, lambda xg: _reference(cell, xg, method, [], fractions)[1]
    )

    def engine_lcp(xg):
        outputs.append(_engine(cell, method)(xg))
        return outputs[-1].lcp

    got_value, got = _gradients(cell, x, engine_lcp)
    assert outputs[0].diagnostics.lcp == pytest.approx(float(want_value), rel=1e-12)
    # (the engine keeps the fraction as a float32 tensor)
    assert outputs[0].diagnostics.lcp_fraction_above == pytest.approx(fractions[0], abs=1e-6)
    assert float(want_value) > 1e-3  # the hinge is active: the comparison means something
    torch.testing.assert_close(got_value, want_value, rtol=1e-12, atol=0)
    # measured: at most ~1e-15 relative (float64 rounding); 1e-11 leaves a margin of ~1e4
    assert _rel_err(got, want) < 1e-11


@pytest.mark.parametrize("name", ["linear", "hgru", "convlstm"])
@pytest.mark.parametrize("method", ["cjfb", "cphantom"])
def test_cjfb_and_cphantom_train_with_the_exact_gradient_of_task_plus_lcp(name, method):
    """cjfb: the one-step gradient at h_{N-1} plus the LCP's; cphantom: the gradient of the
    damped k-step unroll plus the LCP's (through the damped states)."""
    cell, x = _cell_and_input(name)
    with torch.no_grad():
        shape_source = _engine(cell, "bptt")(x).state
    weights = [torch.randn_like(p) for p in state_parts(shape_source)]

    def reference(xg):
        task, lcp = _reference(cell, xg, method, weights)
        return task + lcp

    def engine(xg):
        out = _engine(cell, method)(xg)
        task = sum((w * p).sum() for w, p in zip(weights, state_parts(out.state)))
        return task + out.lcp

    want_value, want = _gradients(cell, x, reference)
    got_value, got = _gradients(cell, x, engine)
    torch.testing.assert_close(got_value, want_value, rtol=1e-12, atol=0)
    # the LCP's share is not negligible, so a missing or wrong LCP gradient shows
    _, lcp_only = _gradients(cell, x, lambda xg: _reference(cell, xg, method, weights)[1])
    assert _flat(lcp_only).norm() > 1e-3 * _flat(want).norm()
    # measured: at most ~1e-15 relative; 1e-11 leaves a margin of ~1e4
    assert _rel_err(got, want) < 1e-11
