"""The cheap C-RBP settings (forward solver to a tolerance, adaptive Neumann series, a compiled
cell step) on the core and on both front-ends: fallbacks, diagnostics counts, and gradients
that the settings must not change."""

import logging
import warnings

import pytest
import torch
from helpers import engine_grads

from crbp_d2.recurrent import HGRUCell, MaskHeadHGRUCell, RecurrentEngine
from crbp_d2.recurrent.compiled import CompiledStep, compiled_step
from crbp_d2.recurrent.spec import engine_config_defaults, spec_from_node


def _neumann_terms_by_hand(cell, x, steps: int, tol: float) -> int:
    """The first k >= 1 with ||(J^T)^k g0|| <= tol ||g0||, from torch.autograd VJPs at the state
    of ``steps - 1`` plain iterations from 0 (g0: the gradient of ``engine_grads``'s loss)."""
    drive = cell.prepare(x).detach()
    with torch.no_grad():
        state = torch.zeros_like(cell.init_state(drive))
        for _ in range(steps - 1):
            state = cell(drive, state)
    state = state.requires_grad_()
    last = cell(drive, state)
    g0 = torch.autograd.grad(last.square().mean(), last, retain_graph=True)[0]
    v = g0
    for k in range(1, 1000):
        v = torch.autograd.grad(last, state, v, retain_graph=True)[0]
        if v.norm() <= tol * g0.norm():
            return k
    raise AssertionError("the series did not fall under tol")


def _cells():
    torch.manual_seed(0)
    return {
        "pathfinder": (HGRUCell(4, 3), torch.rand(2, 4, 12, 12)),
        "mask_head": (MaskHeadHGRUCell(16, 3, norm_groups=4), torch.rand(3, 16, 14, 14)),
    }


def test_a_failing_compiler_falls_back_to_eager_and_says_why(caplog):
    cell, x = _cells()["pathfinder"]

    def broken(fn, **kwargs):
        raise RuntimeError("no C++ compiler")

    step = CompiledStep(cell, compiler=broken)
    with caplog.at_level(logging.WARNING, logger="crbp_d2.recurrent.compiled"):
        out = step(x, torch.zeros_like(x))
    assert "no C++ compiler" in step.failure and "runs eager" in caplog.text
    assert torch.equal(out, cell(x, torch.zeros_like(x))) and step.calls == 0


def test_compile_cell_falls_back_without_changing_the_gradient(monkeypatch):
    cell, x = _cells()["mask_head"]
    want, _ = engine_grads(RecurrentEngine(cell, 6, "crbp", neumann_steps=4), x)
    step = compiled_step(cell)
    monkeypatch.setattr(step, "_compiler", None)
    got, out = engine_grads(RecurrentEngine(cell, 6, "crbp", neumann_steps=4, compile_cell=True), x)
    assert step.failure == "this torch has no torch.compile"
    assert torch.equal(got, want) and out.diagnostics.neumann_terms == 4


@pytest.mark.slow
@pytest.mark.parametrize("method", ["crbp", "tbptt"])
def test_compiled_cell_gives_the_eager_float32_gradient_on_both_cells(method):
    """Both cells in one process: a compiled graph must never be reused for the other cell
    (with dynamic shapes, torch 2.14's CPU backend gave gradients 55% off there)."""
    for name, (cell, x) in _cells().items():
        want, eager = engine_grads(RecurrentEngine(cell, 8, method, neumann_steps=6), x)
        fast = RecurrentEngine(cell, 8, method, neumann_steps=6, compile_cell=True)
        got, out = engine_grads(fast, x)
        step = compiled_step(cell)
        assert step.failure is None and step.calls > 0, name
        assert float((got - want).norm() / want.norm()) < 1e-5, name
        assert out.diagnostics.forward_evaluations == eager.diagnostics.forward_evaluations


def test_cheap_forward_and_backward_report_what_they_used():
    cell, x = _cells()["mask_head"]
    with torch.no_grad():
        cell.gate_exc.bias.fill_(2.0)  # a fast contraction: the tolerances are reached early
    full = RecurrentEngine(cell, 60, "rbp", neumann_steps=40)
    cheap = RecurrentEngine(
        cell, 60, "rbp", neumann_steps=40, solver="anderson", solver_tol=1e-4, neumann_tol=1e-2
    )
    want, out_full = engine_grads(full, x)
    got, out = engine_grads(cheap, x)
    diag = out.diagnostics
    assert diag.forward_evaluations < 60 and diag.solver_residual <= 1e-4
    assert diag.solver_fell_back is False
    # 23 terms, also by hand at the plain-iteration state (||(J^T)^k g0|| / ||g0||: 0.0103 at
    # k = 22, 0.0091 at 23: ~10% either side of tol, more than the Anderson state's shift)
    assert diag.neumann_terms == _neumann_terms_by_hand(cell, x, steps=60, tol=1e-2)
    scalars = diag.scalars()
    assert scalars["forward_evaluations"] == diag.forward_evaluations
    assert scalars["neumann_terms"] == diag.neumann_terms and scalars["solver_fell_back"] == 0.0
    assert out_full.diagnostics.forward_evaluations == 60
    assert float((got - want).norm() / want.norm()) < 1e-2


def test_anderson_fallback_at_random_weights_is_reported():
    cell, x = _cells()["mask_head"]
    calls = {"n": 0}
    real_forward = cell.forward

    def unstable(drive, state):  # an extrapolated iterate lands where the map blows up
        calls["n"] += 1
        out = real_forward(drive, state)
        return out * 1e6 if calls["n"] == 10 else out

    cell.forward = unstable
    engine = RecurrentEngine(cell, 30, "rbp", neumann_steps=3, solver="anderson")
    _, out = engine_grads(engine, x)
    assert out.diagnostics.solver_fell_back is True
    assert out.diagnostics.scalars()["solver_fell_back"] == 1.0


def test_settings_that_must_not_change_the_gradient():
    cell, x = _cells()["pathfinder"]
    base = dict(steps=8, method="crbp", neumann_steps=5)
    want, _ = engine_grads(RecurrentEngine(cell, **base), x)
    # a tolerance never reached leaves the budget and the gradient as they are
    for extra in ({"solver_tol": 1e-30}, {"neumann_tol": 1e-30}, {"solver": "iterate"}):
        got, out = engine_grads(RecurrentEngine(cell, **base, **extra), x)
        assert torch.equal(got, want), extra
        assert out.diagnostics.forward_evaluations == 8 and out.diagnostics.neumann_terms == 5


def test_forward_solver_key_and_its_deprecated_name():
    node = engine_config_defaults(FORWARD_SOLVER="anderson")
    assert node["SOLVER"] == "" and spec_from_node(node).solver == "anderson"
    old = {**engine_config_defaults(), "SOLVER": "anderson"}
    with pytest.warns(FutureWarning, match=r"RECURRENT\.SOLVER is deprecated: use RECURRENT\."):
        assert spec_from_node(old).solver == "anderson"
    with pytest.raises(ValueError, match="FORWARD_SOLVER = 'broyden'"):
        spec_from_node({**engine_config_defaults(), "FORWARD_SOLVER": "broyden"})
    with pytest.raises(ValueError, match="COMPILE_CELL = 1"):
        spec_from_node({**engine_config_defaults(), "COMPILE_CELL": 1})


def test_pathfinder_config_reads_the_cheap_settings_and_the_old_solver_key():
    from crbp_d2.pathfinder.config import load_config
    from crbp_d2.pathfinder.modeling import build_model

    keys = [
        "MODEL.CHANNELS",
        4,
        "MODEL.RECURRENT.KERNEL_SIZE",
        3,
        "MODEL.RECURRENT.SOLVER_TOL",
        1e-3,
    ]
    with pytest.warns(FutureWarning, match="MODEL.RECURRENT.FORWARD_SOLVER"):
        cfg = load_config(overrides=keys + ["MODEL.RECURRENT.SOLVER", "anderson"])
        spec = build_model(cfg).engine.spec
    assert spec.solver == "anderson" and spec.solver_tol == 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        cfg = load_config(
            overrides=keys
            + ["MODEL.RECURRENT.FORWARD_SOLVER", "anderson", "MODEL.RECURRENT.COMPILE_CELL", True]
        )
        spec = build_model(cfg).engine.spec
    assert spec.solver == "anderson" and spec.compile_cell


def test_detectron2_config_reads_the_cheap_settings_and_the_old_solver_key():
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import add_crbp_config, validate_crbp_config

    from detectron2.config import get_cfg

    cfg = add_crbp_config(get_cfg())
    cfg.merge_from_list(["MODEL.ROI_MASK_HEAD.RECURRENT.SOLVER", "anderson"])
    with pytest.warns(FutureWarning, match="RECURRENT.FORWARD_SOLVER"):
        assert validate_crbp_config(cfg).solver == "anderson"
    cfg = add_crbp_config(get_cfg())
    cfg.merge_from_list(
        [
            "MODEL.ROI_MASK_HEAD.RECURRENT.FORWARD_SOLVER",
            "anderson",
            "MODEL.ROI_MASK_HEAD.RECURRENT.NEUMANN_TOL",
            1e-3,
            "MODEL.ROI_MASK_HEAD.RECURRENT.COMPILE_CELL",
            True,
        ]
    )
    spec = validate_crbp_config(cfg)
    assert spec.solver == "anderson" and spec.neumann_tol == 1e-3 and spec.compile_cell


# -- the CUDA-graph path: what a CPU can check -------------------------------------------------


def test_bucket_sizes_and_padding():
    from crbp_d2.recurrent.cuda_graph import bucket_size, pad_batch

    assert [bucket_size(n) for n in (0, 1, 8, 9, 64, 65, 512, 513, 1100)] == [
        8, 8, 8, 16, 64, 128, 512, 1024, 1536,
    ]  # fmt: skip
    assert bucket_size(3, (2, 5)) == 5 and bucket_size(11, (2, 5)) == 15
    with pytest.raises(ValueError, match="increasing integers"):
        bucket_size(3, (8, 4))
    with pytest.raises(ValueError, match="integer >= 0"):
        bucket_size(-1)
    x = torch.rand(5, 3, 2, 2)
    padded = pad_batch(x, 8)
    assert padded.shape == (8, 3, 2, 2) and torch.equal(padded[:5], x)
    assert not padded[5:].any() and pad_batch(x, 5) is x
    with pytest.raises(ValueError, match="cannot pad a batch of 5 down to 4"):
        pad_batch(x, 4)


def test_padding_rois_does_not_change_a_batch_independent_cell():
    cell, _ = _cells()["mask_head"]
    from crbp_d2.recurrent.cuda_graph import pad_batch

    assert cell.batch_independent and not HGRUCell(4, 3).batch_independent
    x, h = torch.rand(5, 16, 14, 14), torch.rand(5, 16, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(cell(pad_batch(x, 8), pad_batch(h, 8))[:5], cell(x, h))


def test_cuda_graph_on_cpu_is_eager_and_says_so(caplog):
    from crbp_d2.recurrent.cuda_graph import GraphedSteps

    cell, x = _cells()["mask_head"]
    with pytest.raises(ValueError, match="need a CUDA drive"):
        GraphedSteps(cell)(x, torch.zeros_like(x), 3)
    want, _ = engine_grads(RecurrentEngine(cell, 6, "crbp", neumann_steps=4), x)
    with caplog.at_level(logging.WARNING, logger="crbp_d2.recurrent.engine"):
        got, out = engine_grads(
            RecurrentEngine(cell, 6, "crbp", neumann_steps=4, cuda_graph=True), x
        )
    assert "not CUDA; eager" in caplog.text and torch.equal(got, want)
    assert out.diagnostics.forward_evaluations == 6
