"""The Detectron2 trainer's AdamW (crbp_d2.rfpn.train.optimizer) against Detectron2's own."""

from crbp_d2.rfpn.train.optimizer import ClippedAdamW, build_adamw, clip_each_grad_norm_

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.solver.build import maybe_add_gradient_clipping


def _parameters(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(64, 32, 3, 3), (64,), (256, 100), (7,), (3, 3)]
    scales = [10.0, 1e-3, 1.0, 0.0, 100.0]
    params = []
    for shape, scale in zip(shapes, scales):
        p = torch.nn.Parameter(torch.randn(shape, generator=generator))
        p.grad = torch.randn(shape, generator=generator) * scale
        params.append(p)
    params.append(torch.nn.Parameter(torch.ones(2)))  # no gradient
    return params


def _cfg(clip_type: str = "norm", amp: bool = False):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 5.0
    cfg.SOLVER.AMP.ENABLED = amp
    return cfg


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_each_grad_norm_is_detectron2_per_parameter_clipping_bit_for_bit(norm_type):
    ours, theirs = _parameters(), _parameters()
    clip_each_grad_norm_(ours, 5.0, norm_type)
    for p in theirs:
        if p.grad is not None:  # (torch's clip_grad_norm_ fails on a tensor without gradient)
            torch.nn.utils.clip_grad_norm_(p, 5.0, norm_type)
    clipped = 0
    for a, b, before in zip(ours, theirs, _parameters()):
        if b.grad is None:
            assert a.grad is None
            continue
        assert torch.equal(a.grad, b.grad)
        clipped += not torch.equal(b.grad, before.grad)
    # the large gradients were scaled (the N(0, 1) one only above its max-norm), the others kept
    assert clipped == (2 if norm_type == float("inf") else 3)


def _train(optimizer_factory, steps: int = 5):
    params = _parameters()
    optimizer = optimizer_factory([{"params": params[:-1]}])
    for step in range(steps):
        for i, p in enumerate(params):
            if p.grad is not None:
                p.grad = torch.cos(p.detach() * (step + 1)) * (10.0 ** (i - 2))
        optimizer.step()
    return optimizer, params


def test_build_adamw_fused_matches_detectron2_adamw_with_clipping():
    cfg = _cfg()
    optimizer, ours = _train(lambda groups: build_adamw(cfg, groups))
    assert isinstance(optimizer, ClippedAdamW) and optimizer.defaults["fused"]
    reference = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    _, theirs = _train(lambda groups: reference(groups, lr=1e-3, weight_decay=0.05))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.equal(ours[0], _parameters()[0])


def test_build_adamw_uses_foreach_under_amp_and_detectron2_clipping_by_value():
    optimizer = build_adamw(_cfg(amp=True), [{"params": _parameters()}])
    assert not optimizer.defaults["fused"] and optimizer.defaults["foreach"]
    optimizer = build_adamw(_cfg(clip_type="value"), [{"params": _parameters()}])
    assert type(optimizer).__name__ == "AdamWWithGradientClip"
    _, ours = _train(lambda groups: build_adamw(_cfg(clip_type="value"), groups))
    reference = maybe_add_gradient_clipping(_cfg(clip_type="value"), torch.optim.AdamW)
    _, theirs = _train(lambda groups: reference(groups, lr=1e-3, weight_decay=0.05))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_build_adamw_falls_back_to_foreach_without_a_fused_kernel(monkeypatch):
    original_init = torch.optim.AdamW.__init__

    def init_without_fused(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be CUDA tensors")
        original_init(self, params, *args, fused=fused, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", init_without_fused)
    optimizer = build_adamw(_cfg(), [{"params": _parameters()}])
    assert not optimizer.defaults["fused"] and optimizer.defaults["foreach"]
