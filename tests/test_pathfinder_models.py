"""Pathfinder models: filter bank, forward/backward for every model and method, references."""

import math

import pytest
import torch

from crbp_d2.pathfinder.config import load_config
from crbp_d2.pathfinder.evaluation.evaluator import evaluate_model
from crbp_d2.pathfinder.losses import compute_loss
from crbp_d2.pathfinder.modeling import (
    FeedforwardCNN,
    RecurrentSegmenter,
    UnrolledHGRU,
    build_model,
    center_filter,
    count_parameters,
    gabor_bank,
    gabor_filter,
)
from crbp_d2.recurrent import LCP_METHODS, METHODS, NEUMANN_METHODS
from crbp_d2.recurrent.diagnostics import relative_residual

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")


def small_cfg(*overrides):
    base = ["MODEL.CHANNELS", 5, "MODEL.RECURRENT.KERNEL_SIZE", 3, "MODEL.RECURRENT.TIMESTEPS", 4]
    return load_config(overrides=base + list(overrides))


def batch(size=12):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 1, size, size, generator=g)
    label = (torch.rand(2, size, size, generator=g) > 0.8).long()
    return image, label


# -- filters ---------------------------------------------------------------------------------


def test_gabor_bank_matches_the_paper_layout():
    bank = gabor_bank(25, 7, "dog")
    assert bank.shape == (25, 1, 7, 7)
    flat = bank.flatten(1)
    assert torch.allclose(flat.sum(1), torch.zeros(25), atol=1e-5)  # all zero-mean
    assert torch.allclose(flat.norm(dim=1), torch.ones(25), atol=1e-5)  # unit norm
    # even-phase filters are point-symmetric, odd-phase ones antisymmetric
    assert torch.allclose(bank[:12], bank[:12].flip(-1, -2), atol=1e-6)
    assert torch.allclose(bank[12:24], -bank[12:24].flip(-1, -2), atol=1e-6)
    # orientation 0 (wave vector along columns) is constant along rows inside the aperture centre
    assert torch.allclose(bank[0, 0, 2:5, 3], bank[0, 0, 3, 3].expand(3), atol=0.15)
    # the DoG is positive in the centre and negative in the surround
    dog = bank[24, 0]
    assert dog[3, 3] > 0 and dog[3, 5] < 0


def test_disk_centre_filter_is_the_authors_uniform_disk():
    disk = center_filter(7, "disk")
    assert int((disk > 0).sum()) == 29
    assert math.isclose(float(disk.sum()), 49.0, rel_tol=1e-6)
    assert math.isclose(float(disk.max()), 49 / 29, rel_tol=1e-6)


def test_bank_with_other_channel_counts_and_bad_input():
    assert gabor_bank(8, 7).shape == (8, 1, 7, 7)
    assert torch.allclose(gabor_bank(8, 7)[7], -gabor_bank(8, 7)[6])
    with pytest.raises(ValueError, match="phase"):
        gabor_filter(7, 0.0, "diagonal")
    with pytest.raises(ValueError, match="centre filter"):
        center_filter(7, "square")


# -- parameter counts (paper Fig. 2b / the authors' models) ----------------------------------


@pytest.mark.parametrize(
    "kernel, expected", [(15, 284_127), (9, 104_127), (5, 34_127), (3, 14_127)]
)
def test_hgru_parameter_counts(kernel, expected):
    # The authors' counts are 100 higher: their cell holds 4 BatchNorms and uses only 2.
    cfg = load_config(overrides=["MODEL.RECURRENT.KERNEL_SIZE", kernel])
    assert count_parameters(build_model(cfg)) == expected


def test_cnn_control_parameter_count_matches_the_authors():
    cfg = load_config(overrides=["MODEL.RECURRENT.CELL", "cnn", "MODEL.RECURRENT.METHOD", "bptt"])
    model = build_model(cfg)
    assert isinstance(model, FeedforwardCNN)
    assert count_parameters(model) == 845_527


# -- forward and backward --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["hgru", "convlstm"])
@pytest.mark.parametrize("method", METHODS)
def test_recurrent_models_forward_backward_every_method(arch, method):
    cfg = small_cfg("MODEL.RECURRENT.CELL", arch, "MODEL.RECURRENT.METHOD", method)
    model = build_model(cfg)
    assert isinstance(model, RecurrentSegmenter)
    image, label = batch()
    total, task, out = compute_loss(model, image, label, cfg)
    assert out.logits.shape == (2, 2, 12, 12)
    assert torch.isfinite(total)
    if method in LCP_METHODS:
        assert out.lcp is not None and out.lcp.requires_grad
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert model.input_layer.conv.weight.grad.abs().sum() > 0
    if method in NEUMANN_METHODS:
        assert out.diagnostics.neumann_terms is not None  # the Neumann backward ran


@pytest.mark.parametrize("arch", ["cnn", "ff_hgru"])
def test_feedforward_controls_forward_backward(arch):
    cfg = small_cfg("MODEL.RECURRENT.CELL", arch, "MODEL.RECURRENT.METHOD", "bptt")
    model = build_model(cfg)
    image, label = batch()
    total, _, out = compute_loss(model, image, label, cfg)
    assert out.logits.shape == (2, 2, 12, 12) and out.lcp is None
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_feedforward_hgru_rejects_a_recurrent_method_and_other_steps():
    with pytest.raises(ValueError, match="feedforward hGRU"):
        build_model(small_cfg("MODEL.RECURRENT.CELL", "ff_hgru", "MODEL.RECURRENT.METHOD", "crbp"))
    model = build_model(
        small_cfg("MODEL.RECURRENT.CELL", "ff_hgru", "MODEL.RECURRENT.METHOD", "bptt")
    )
    with pytest.raises(ValueError, match="exactly 4 layers"):
        model(batch()[0], steps=6)


def test_unrolled_hgru_with_tied_weights_equals_the_bptt_hgru():
    """Reference: copying one cell into every layer of the feedforward hGRU gives the BPTT model's
    logits, and the sum of its per-layer gradients is the shared cell's gradient."""
    cfg = small_cfg("MODEL.RECURRENT.METHOD", "bptt", "MODEL.RECURRENT.CELL_NORM", "GN")
    recurrent = build_model(cfg).double()
    unrolled = build_model(
        small_cfg(
            "MODEL.RECURRENT.METHOD",
            "bptt",
            "MODEL.RECURRENT.CELL",
            "ff_hgru",
            "MODEL.RECURRENT.CELL_NORM",
            "GN",
        )
    ).double()
    assert isinstance(unrolled, UnrolledHGRU)
    unrolled.input_layer.load_state_dict(recurrent.input_layer.state_dict())
    unrolled.readout.load_state_dict(recurrent.readout.state_dict())
    for cell in unrolled.cells:
        cell.load_state_dict(recurrent.engine.cell.state_dict())
    image, label = batch()
    image = image.double()
    loss_r, _, out_r = compute_loss(recurrent, image, label, cfg)
    loss_u, _, out_u = compute_loss(unrolled, image, label, cfg)
    assert torch.allclose(out_r.logits, out_u.logits, atol=1e-10)
    loss_r.backward()
    loss_u.backward()
    for name, p in recurrent.engine.cell.named_parameters():
        summed = sum(dict(c.named_parameters())[name].grad for c in unrolled.cells)
        assert torch.allclose(p.grad, summed, atol=1e-10), name
    assert torch.allclose(
        recurrent.input_layer.conv.weight.grad, unrolled.input_layer.conv.weight.grad
    )


def test_logits_at_steps_match_the_forward_at_those_steps():
    model = build_model(small_cfg("MODEL.RECURRENT.CELL_NORM", "GN"))
    model.eval()
    image, _ = batch()
    with torch.no_grad():
        by_step = model.logits_at_steps(image, [0, 2, None, 9])
        for n in (2, 9):
            assert torch.allclose(by_step[n], model(image, steps=n).logits, atol=1e-6)
        assert torch.allclose(by_step[None], model(image).logits, atol=1e-6)
        per_step = model.logits_per_step(image, 3)
    assert len(per_step) == 4 and torch.allclose(per_step[2], by_step[2])
    assert math.isfinite(model.last_residual)


def test_logits_at_steps_run_the_cell_only_up_to_the_largest_count():
    model = build_model(small_cfg("MODEL.RECURRENT.CELL_NORM", "GN"))
    model.eval()
    image, _ = batch()
    calls = []
    model.engine.cell.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        zero = model.logits_at_steps(image, [0])[0]
        assert calls == [] and math.isnan(model.last_residual)
        h0 = model.engine.cell.init_state(model.engine.cell.prepare(model.input_layer(image)))
        assert torch.equal(zero, model.readout(model.engine.cell.output(h0)))
        model.logits_at_steps(image, [3, 1])
    assert len(calls) == 3


def test_each_step_count_reports_its_own_residual():
    model = build_model(small_cfg("MODEL.RECURRENT.CELL_NORM", "GN"))
    model.eval()
    image, _ = batch()
    with torch.no_grad():
        model.logits_at_steps(image, [0, 1, 3, 6])
        states = list(model.engine.iterate(model.input_layer(image), 6))
    expected = {t: relative_residual(states[t], states[t - 1]) for t in (1, 3, 6)}
    assert math.isnan(model.last_residuals[0])
    for t, value in expected.items():
        assert model.last_residuals[t] == pytest.approx(value, rel=1e-6)
    assert model.last_residual == pytest.approx(expected[6], rel=1e-6)
    assert len(set(expected.values())) == 3  # distinct per count, not one shared number


def test_evaluation_reports_the_residual_of_each_count():
    model = build_model(small_cfg("MODEL.RECURRENT.CELL_NORM", "GN"))
    image, label = batch()
    results = evaluate_model(model, [(image, label)], "cpu", steps=[1, 4])
    with torch.no_grad():
        model.eval()
        states = list(model.engine.iterate(model.input_layer(image), 4))
    for t in (1, 4):
        assert results[t]["test_residual"] == pytest.approx(
            relative_residual(states[t], states[t - 1]), rel=1e-6
        )


def test_readout_bias_switches():
    prior = build_model(small_cfg("MODEL.READOUT_BIAS", "prior")).readout.conv.bias
    assert torch.allclose(prior, torch.tensor([0.0, -math.log(99.0)]))
    authors = build_model(small_cfg("MODEL.READOUT_BIAS", "authors")).readout.conv.bias
    assert torch.allclose(authors, torch.full((2,), math.log(99.0)))


def test_input_layer_is_the_squared_gabor_conv():
    model = build_model(small_cfg("MODEL.CHANNELS", 25))
    assert torch.allclose(model.input_layer.conv.weight, gabor_bank(25, 7, "dog"))
    image = torch.rand(1, 1, 9, 9)
    direct = (
        torch.nn.functional.conv2d(
            image, model.input_layer.conv.weight, model.input_layer.conv.bias, padding=3
        )
        ** 2
    )
    assert torch.allclose(model.input_layer(image), direct)


def test_unknown_architecture_is_one_clear_error():
    cfg = small_cfg("MODEL.RECURRENT.CELL", "transformer")
    with pytest.raises(ValueError, match="unknown MODEL.RECURRENT.CELL 'transformer'"):
        build_model(cfg)
