"""ONNX export of the fixed-step recurrent mask head (crbp_d2.onnx_export): onnxruntime gives the
eager mask logits to 1e-4 at RoI counts other than the example's, for the hGRU and the convLSTM
cell, for the torchvision head and the Detectron2 head; and the fixed-step head is the eager
head's inference path."""

import importlib.util

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytest.importorskip("torchvision")

from crbp_d2.onnx_export import export_mask_head_onnx, onnx_max_abs_error  # noqa: E402
from crbp_d2.tv import FixedStepMaskHead, small_maskrcnn  # noqa: E402

WIDTH, CLASSES = 16, 3
ROI_COUNTS = (1, 2, 7)  # the example has 3


def tv_roi_heads(cell: str, steps: int = 3):
    model = small_maskrcnn(
        CLASSES, head="recurrent", width=WIDTH, cell=cell, steps=steps, cell_norm_groups=4
    )
    heads = model.roi_heads
    with torch.no_grad():  # move the readout off its near-zero init
        for param in list(heads.mask_head.parameters()) + list(heads.mask_predictor.parameters()):
            param.add_(0.05 * torch.randn_like(param))
    return heads.eval()


@pytest.fixture(scope="module", params=["hgru", "convlstm"])
def exported(request, tmp_path_factory):
    """(roi heads, fixed-step head, ONNX file) per cell, exported once."""
    heads = tv_roi_heads(request.param)
    head = FixedStepMaskHead(heads)
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    return heads, head, export_mask_head_onnx(head, torch.randn(3, WIDTH, 14, 14), path)


def test_onnx_head_gives_the_eager_logits_for_any_roi_count(exported):
    heads, head, path = exported
    inputs = [torch.randn(r, WIDTH, 14, 14) for r in ROI_COUNTS]
    assert onnx_max_abs_error(path, head, inputs) < 1e-4
    # the exported head is the head the model runs (engine in eval mode, then the readout)
    with torch.no_grad():
        eager = heads.mask_predictor(heads.mask_head(inputs[-1]))
    torch.testing.assert_close(head(inputs[-1]), eager, rtol=1e-5, atol=1e-5)


def test_onnx_check_sees_a_different_head(exported):
    """The check is not vacuous: the file against the same head run one step more."""
    heads, head, path = exported
    other = FixedStepMaskHead(heads, steps=head.steps + 1)
    assert onnx_max_abs_error(path, other, [torch.randn(2, WIDTH, 14, 14)]) > 1e-3


def test_detectron2_head_exports_to_onnx(tmp_path, cell="hgru"):
    if importlib.util.find_spec("detectron2") is None:
        pytest.skip("Detectron2 is not installed")
    import crbp_d2.rfpn.config  # (first: before anything imports detectron2)
    from crbp_d2.rfpn.modeling import RecurrentMaskHead
    from crbp_d2.rfpn.modeling.export import FixedStepMaskHead as D2FixedStepMaskHead

    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    cfg = crbp_d2.rfpn.config.add_crbp_config(get_cfg())
    cfg.MODEL.ROI_MASK_HEAD.NAME = "RecurrentMaskHead"
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = WIDTH
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = CLASSES
    node = cfg.MODEL.ROI_MASK_HEAD.RECURRENT
    node.CELL, node.TIMESTEPS, node.CELL_NORM_GROUPS, node.READOUT_NORM = cell, 3, 4, ""
    head = RecurrentMaskHead(cfg, ShapeSpec(channels=WIDTH, height=14, width=14))
    with torch.no_grad():
        for param in head.parameters():
            param.add_(0.05 * torch.randn_like(param))
    fixed = D2FixedStepMaskHead(head.eval())
    path = export_mask_head_onnx(fixed, torch.randn(3, WIDTH, 14, 14), tmp_path / "d2.onnx")
    inputs = [torch.randn(r, WIDTH, 14, 14) for r in ROI_COUNTS]
    assert onnx_max_abs_error(path, fixed, inputs) < 1e-4
