"""``autocast_bf16``: the graph-free steps and the Neumann VJPs under CPU bfloat16 autocast, the
float32 parts left float32, gradients near the float32 ones, a fallback that says so."""

import logging

import pytest
import torch
from helpers import engine_grads

import crbp_d2.recurrent.bf16 as bf16
import crbp_d2.recurrent.neumann as neumann
from crbp_d2.recurrent import HGRUCell, MaskHeadHGRUCell, RecurrentEngine
from crbp_d2.recurrent.base import cell_prepare
from crbp_d2.recurrent.spec import engine_config_defaults, spec_from_node

# The relative gradient error of the switch against eager float32, measured on these cells
# (C-RBP-6, K = 4, seeds 0-2): 0.8e-3 - 1.4e-3 (Pathfinder hGRU), 1.4e-3 - 3.5e-3 (mask-head
# hGRU); bfloat16 keeps 8 bits of mantissa (2^-8 = 3.9e-3), so 1e-5 cannot hold. The bound:
# about 3x the largest measured error.
BF16_GRAD_RTOL = 1e-2
# float32 paths must agree within 1e-5 (issue 18); above it, bfloat16 did run.
FLOAT32_RTOL = 1e-5


def _cells():
    torch.manual_seed(0)
    return {
        "pathfinder": (HGRUCell(4, 3), torch.rand(2, 4, 12, 12)),
        "mask_head": (MaskHeadHGRUCell(16, 3, norm_groups=4), torch.rand(3, 16, 14, 14)),
    }


@pytest.fixture
def native_bf16(monkeypatch):
    """Run the switch as on a CPU with native bfloat16 (autocast emulates it elsewhere)."""
    monkeypatch.setattr(bf16, "cpu_has_native_bf16", lambda: True)


@pytest.fixture
def neumann_dtypes(monkeypatch):
    """Record the dtypes of g0, of every VJP's result and of the returned sum."""
    seen = {"g0": [], "vjp": [], "sum": []}
    real = neumann.neumann_series

    def spy(vjp, g0, *args, **kwargs):
        def recorded(v):
            out = vjp(v)
            seen["vjp"] += [t.dtype for t in out]
            return out

        seen["g0"] += [g.dtype for g in g0]
        total = real(recorded, g0, *args, **kwargs)
        seen["sum"] += [t.dtype for t in total]
        return total

    monkeypatch.setattr(neumann, "neumann_series", spy)
    return seen


@pytest.mark.parametrize("name", ["pathfinder", "mask_head"])
def test_bf16_gradient_is_near_float32_and_the_float32_parts_stay_float32(
    name, native_bf16, neumann_dtypes, monkeypatch
):
    import crbp_d2.recurrent.engine as engine_module

    cell, x = _cells()[name]
    want, eager = engine_grads(RecurrentEngine(cell, 6, "crbp", neumann_steps=4), x)
    neumann_dtypes["vjp"].clear()
    recomputes = []
    real_attach = engine_module.rbp_attach

    def attach(prev, last, *args, **kwargs):
        recomputes.append((args[6] if len(args) > 6 else kwargs.get("recompute"), prev))
        return real_attach(prev, last, *args, **kwargs)

    monkeypatch.setattr(engine_module, "rbp_attach", attach)
    fast = RecurrentEngine(cell, 6, "crbp", neumann_steps=4, autocast_bf16=True)
    got, out = engine_grads(fast, x)
    ((recompute, prev),) = recomputes  # the VJPs go through the step under bfloat16 autocast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = cell(cell_prepare(cell, x), prev[0])
    assert torch.equal(recompute(prev)[0], autocast.float())
    error = float((got - want).norm() / want.norm())
    assert FLOAT32_RTOL < error < BF16_GRAD_RTOL, error
    assert out.state.dtype == torch.float32 and out.lcp.dtype == torch.float32
    assert set(neumann_dtypes["vjp"]) == {torch.float32}  # each term, summed in float32
    assert set(neumann_dtypes["sum"]) == {torch.float32} and len(neumann_dtypes["vjp"]) == 4
    assert out.diagnostics.neumann_terms == 4
    assert out.diagnostics.forward_evaluations == eager.diagnostics.forward_evaluations


def test_bf16_graph_free_steps_run_in_bfloat16_and_hand_back_float32(native_bf16):
    cell, x = _cells()["mask_head"]
    engine = RecurrentEngine(cell, 6, "crbp", autocast_bf16=True)
    step = engine._graph_free_step(x)
    with torch.no_grad():
        h = torch.rand_like(x)
        drive = cell_prepare(cell, x)
        got, want = step(drive, h), cell(drive, h)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = cell(drive, h)
    assert got.dtype == torch.float32
    assert torch.equal(got, autocast.float()) and not torch.equal(got, want)
    with torch.no_grad():  # inference uses the switch too
        state = engine.eval()(x).state
    assert state.dtype == torch.float32


def test_without_native_bf16_the_switch_runs_float32_and_logs_one_line(monkeypatch, caplog):
    monkeypatch.setattr(bf16, "cpu_has_native_bf16", lambda: False)
    cell, x = _cells()["pathfinder"]
    want, _ = engine_grads(RecurrentEngine(cell, 6, "crbp", neumann_steps=4), x)
    engine = RecurrentEngine(cell, 6, "crbp", neumann_steps=4, autocast_bf16=True)
    with caplog.at_level(logging.WARNING, logger="crbp_d2.recurrent.engine"):
        got, _ = engine_grads(engine, x)
        again, _ = engine_grads(engine, x)
    lines = [r.getMessage() for r in caplog.records if "autocast_bf16" in r.getMessage()]
    assert lines == [
        "autocast_bf16: this CPU has no native bfloat16 (avx512_bf16 / amx_bf16); float32"
    ]
    assert torch.equal(got, want) and torch.equal(again, want)


def test_autocast_bf16_config_key_on_both_front_ends():
    assert engine_config_defaults()["AUTOCAST_BF16"] is False
    assert spec_from_node(engine_config_defaults(AUTOCAST_BF16=True)).autocast_bf16
    with pytest.raises(ValueError, match="AUTOCAST_BF16 = 'yes'"):
        spec_from_node({**engine_config_defaults(), "AUTOCAST_BF16": "yes"})
    from crbp_d2.pathfinder.config import load_config
    from crbp_d2.pathfinder.modeling import build_model

    keys = [
        "MODEL.CHANNELS",
        4,
        "MODEL.RECURRENT.KERNEL_SIZE",
        3,
        "MODEL.RECURRENT.AUTOCAST_BF16",
        True,
    ]
    assert build_model(load_config(overrides=keys)).engine.spec.autocast_bf16
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import add_crbp_config, validate_crbp_config

    from detectron2.config import get_cfg

    cfg = add_crbp_config(get_cfg())
    assert cfg.MODEL.ROI_MASK_HEAD.RECURRENT.AUTOCAST_BF16 is False
    cfg.merge_from_list(["MODEL.ROI_MASK_HEAD.RECURRENT.AUTOCAST_BF16", True])
    assert validate_crbp_config(cfg).autocast_bf16
