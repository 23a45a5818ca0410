"""One spelling of "off" on both front-ends: "none", with Detectron2's "" accepted, for the norm
keys of the Detectron2 head and of the Pathfinder model."""

import pytest
import torch
from torch import nn

from crbp_d2.pathfinder.modeling import Readout


@pytest.mark.parametrize("off", ["none", ""])
def test_pathfinder_readout_norm_off_either_way(off):
    readout = Readout(channels=4, norm=off)
    assert isinstance(readout.norm, nn.Identity)


def test_pathfinder_readout_norm_unknown_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown readout norm 'off'"):
        Readout(channels=4, norm="off")


@pytest.mark.parametrize("off", ["none", ""])
def test_rfpn_head_norms_off_either_way(off):
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import add_crbp_config, validate_crbp_config

    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY

    cfg = get_cfg()
    add_crbp_config(cfg)
    cfg.MODEL.ROI_MASK_HEAD.NAME = "RecurrentMaskHead"
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    node = cfg.MODEL.ROI_MASK_HEAD.RECURRENT
    node.TIMESTEPS, node.CELL_NORM, node.READOUT_NORM = 2, off, off
    validate_crbp_config(cfg)
    head = ROI_MASK_HEAD_REGISTRY.get("RecurrentMaskHead")(
        cfg, ShapeSpec(channels=8, height=14, width=14)
    )
    assert isinstance(head.readout_norm, nn.Identity)
    assert isinstance(head.engine.cell.norm_inh, nn.Identity)
    head.eval()
    with torch.no_grad():
        assert head.layers(torch.randn(2, 8, 14, 14)).shape[:2] == (2, 80)


def test_rfpn_norm_unknown_is_one_clear_error():
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import add_crbp_config, validate_crbp_config

    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_crbp_config(cfg)
    cfg.MODEL.ROI_MASK_HEAD.NAME = "RecurrentMaskHead"
    cfg.MODEL.ROI_MASK_HEAD.RECURRENT.READOUT_NORM = "off"
    with pytest.raises(ValueError, match="READOUT_NORM = 'off'"):
        validate_crbp_config(cfg)
