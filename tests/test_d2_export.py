"""Export of the recurrent mask head: ``torch.export`` of the fixed-step inference path
(:mod:`crbp_d2.rfpn.modeling.export`) gives the eager head's mask logits, for a number of RoIs other
than the example's, for the hGRU and the convLSTM cell; and the exported graph holds only ATen
operations (no custom autograd Function, no Python callback)."""

import operator

import pytest
import torch

pytest.importorskip("detectron2")

from crbp_d2.rfpn.config import add_crbp_config  # noqa: E402
from crbp_d2.rfpn.modeling import RecurrentMaskHead  # noqa: E402
from crbp_d2.rfpn.modeling.export import FixedStepMaskHead, export_mask_head  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402

WIDTH, CLASSES = 32, 3


def eval_head(cell: str, steps: int = 4, **recurrent) -> RecurrentMaskHead:
    """A narrow head (32 channels) with random weights, in eval mode."""
    cfg = add_crbp_config(get_cfg())
    cfg.MODEL.ROI_MASK_HEAD.NAME = "RecurrentMaskHead"
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = WIDTH
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = CLASSES
    node = cfg.MODEL.ROI_MASK_HEAD.RECURRENT
    node.CELL = cell
    node.TIMESTEPS = steps
    node.CELL_NORM_GROUPS = 8
    node.READOUT_NORM = "GN"
    for key, value in recurrent.items():
        node[key] = value
    head = RecurrentMaskHead(cfg, ShapeSpec(channels=WIDTH, height=14, width=14))
    with torch.no_grad():  # move the readout and predictor off their near-zero init
        for param in head.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return head.eval()


def aten_only(program: "torch.export.ExportedProgram") -> bool:
    """Every call in the exported graph is an ATen operator (what runtimes consume), or the
    ``operator.getitem`` that unpacks a multi-output one (``chunk``)."""
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    return bool(calls) and all(
        n.target is operator.getitem
        or (isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == "aten")
        for n in calls
    )


@pytest.mark.parametrize("cell", ["hgru", "convlstm"])
def test_exported_head_gives_the_eager_mask_logits(cell):
    head = eval_head(cell)
    program = export_mask_head(head, torch.randn(3, WIDTH, 14, 14))
    assert aten_only(program)
    x = torch.randn(7, WIDTH, 14, 14)  # another number of RoIs than the example's 3
    with torch.no_grad():
        eager = head.layers(x)  # the head's own inference path (the engine, test steps)
        exported = program.module()(x)
    assert exported.shape == eager.shape == (7, CLASSES, 28, 28)
    assert exported.dtype == torch.float32
    torch.testing.assert_close(exported, eager, rtol=0, atol=1e-5)
    assert eager.abs().max() > 1e-3  # not two zero maps


def test_export_at_other_steps_matches_the_head_run_for_those_steps():
    head = eval_head("hgru", steps=3, TEST_TIMESTEPS=6)
    x = torch.randn(2, WIDTH, 14, 14)
    program = export_mask_head(head, torch.randn(4, WIDTH, 14, 14), steps=9)
    with torch.no_grad():
        default = FixedStepMaskHead(head)(x)  # its test steps: 6
        head.test_steps = 9
        eager = head.layers(x)
        exported = program.module()(x)
    torch.testing.assert_close(exported, eager, rtol=0, atol=1e-5)
    assert not torch.allclose(default, eager, atol=1e-5)  # the steps matter
    with pytest.raises(ValueError, match="steps must be >= 1"):
        FixedStepMaskHead(head, steps=0)


def test_fixed_step_head_shares_the_weights():
    head = eval_head("hgru")
    fixed = FixedStepMaskHead(head)
    assert {id(p) for p in fixed.parameters()} == {id(p) for p in head.parameters()}
