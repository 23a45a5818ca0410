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


# -- the cell: CELL and its keys inside the recurrent node, on both front-ends ------------------


def test_pathfinder_cell_is_in_the_recurrent_node_as_on_detectron2():
    from crbp_d2.pathfinder.config import get_default_config

    node = get_default_config().MODEL.RECURRENT
    shared = ("CELL", "KERNEL_SIZE", "CELL_NORM", "CELL_NORM_GROUPS", "CHRONOS_LOG")
    assert all(key in node for key in shared)
    model = get_default_config().MODEL
    assert not any(key in model for key in shared + ("ARCH",))  # nothing beside the node
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import add_crbp_config

    from detectron2.config import get_cfg

    head = add_crbp_config(get_cfg()).MODEL.ROI_MASK_HEAD
    assert all(key in head.RECURRENT for key in shared)
    assert "CELL" not in head and "ARCH" not in head.RECURRENT


@pytest.mark.parametrize(
    "old, new, value",
    [
        ("MODEL.ARCH", "MODEL.RECURRENT.CELL", "convlstm"),
        ("MODEL.KERNEL_SIZE", "MODEL.RECURRENT.KERNEL_SIZE", 5),
        ("MODEL.CELL_NORM", "MODEL.RECURRENT.CELL_NORM", "GN"),
        ("MODEL.GATE_TIMESCALE", "MODEL.RECURRENT.GATE_TIMESCALE", 4.0),
    ],
)
@pytest.mark.parametrize("where", ["file", "overrides"])
def test_pathfinder_old_cell_keys_are_read_with_a_warning_naming_the_new(
    tmp_path, old, new, value, where
):
    from crbp_d2.pathfinder.config import load_config

    section, key = old.split(".")
    if where == "file":
        args = (_write_yaml(tmp_path / "old.yaml", f"{section}:\n  {key}: {value}\n"), ())
    else:
        args = (None, (old, str(value)))
    with pytest.warns(FutureWarning, match=f"{old} .* is deprecated: use {new}"):
        cfg = load_config(*args)
    node = cfg
    for part in new.split("."):
        node = node[part]
    assert node == value
    assert key not in cfg.MODEL  # moved, not copied


def test_pathfinder_shipped_configs_use_the_new_cell_keys():
    """Every shipped Pathfinder config loads without a deprecation warning."""
    import glob
    import os
    import warnings

    from crbp_d2.pathfinder.config import CONFIG_DIR, load_config

    files = sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))
    assert files
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            load_config(path)


def test_pathfinder_old_checkpoint_config_restores_the_cell_keys_into_the_node():
    """A config saved before the move (in a checkpoint) loads with the cell in MODEL.RECURRENT."""
    from crbp_d2.pathfinder.config import config_from_dump

    old_dump = "MODEL: {ARCH: convlstm, KERNEL_SIZE: 5, CHANNELS: 3, RECURRENT: {TIMESTEPS: 7}}\n"
    with pytest.warns(FutureWarning) as warned:
        cfg = config_from_dump(old_dump, "old.pth")
    messages = [str(w.message) for w in warned]
    assert any(
        "MODEL.ARCH (in old.pth) is deprecated: use MODEL.RECURRENT.CELL" in m for m in messages
    )
    assert any("MODEL.KERNEL_SIZE (in old.pth) is deprecated" in m for m in messages)
    node = cfg.MODEL.RECURRENT
    assert (node.CELL, node.KERNEL_SIZE, node.TIMESTEPS) == ("convlstm", 5, 7)
    assert cfg.MODEL.CHANNELS == 3
