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


# -- TRAIN_ONLY_HEAD: a training switch, in SOLVER (LazyConfig: train.train_only_head) ----------


def _write_yaml(path, text):
    path.write_text(text)
    return str(path)


def test_rfpn_train_only_head_is_a_solver_key_not_the_heads():
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import get_crbp_cfg, train_only_head
    from crbp_d2.rfpn.lazy_config import recurrent_defaults

    cfg = get_crbp_cfg("", ["SOLVER.TRAIN_ONLY_HEAD", "True"])
    assert cfg.SOLVER.TRAIN_ONLY_HEAD is True and train_only_head(cfg)
    assert get_crbp_cfg().SOLVER.TRAIN_ONLY_HEAD is False
    assert "TRAIN_ONLY_HEAD" not in recurrent_defaults()  # not a key of the head's engine


@pytest.mark.parametrize("where", ["file", "overrides"])
def test_rfpn_old_train_only_head_key_is_read_with_a_warning_naming_the_new(tmp_path, where):
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import get_crbp_cfg, train_only_head

    old = "MODEL.ROI_MASK_HEAD.RECURRENT.TRAIN_ONLY_HEAD"
    if where == "file":
        text = "MODEL:\n  ROI_MASK_HEAD:\n    RECURRENT:\n      TRAIN_ONLY_HEAD: True\n"
        args = (_write_yaml(tmp_path / "old.yaml", text), [])
    else:
        args = ("", [old, "True"])
    with pytest.warns(FutureWarning, match=f"{old} is deprecated: use SOLVER.TRAIN_ONLY_HEAD"):
        cfg = get_crbp_cfg(*args)
    assert cfg.SOLVER.TRAIN_ONLY_HEAD is True and train_only_head(cfg)
    assert cfg.MODEL.ROI_MASK_HEAD.RECURRENT.TRAIN_ONLY_HEAD is None  # moved: read once


def test_rfpn_old_train_only_head_key_in_a_frozen_config_is_still_read():
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import add_crbp_config, train_only_head

    from detectron2.config import get_cfg

    cfg = add_crbp_config(get_cfg())
    cfg.MODEL.ROI_MASK_HEAD.RECURRENT.TRAIN_ONLY_HEAD = True  # never validated, then frozen
    cfg.freeze()
    with pytest.warns(FutureWarning, match="use SOLVER.TRAIN_ONLY_HEAD"):
        assert train_only_head(cfg) is True
