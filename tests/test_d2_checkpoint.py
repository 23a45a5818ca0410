"""Starting R-FPN from a feedforward Panoptic FPN checkpoint, offline: a checkpoint written here in
Detectron2's model-zoo layout (a pickle of {"model": {name: numpy array}, "__author__": ...}) from
the quick recipe's FPN twin is loaded into the R-FPN config that fine-tunes on it
(``configs/quick/R-FPN-CRBP-from-FPN-synthetic.yaml``): everything but the mask head is loaded
with the file's values, the 4-conv head is skipped, the recurrent head is new, the log says so,
and ``SOLVER.TRAIN_ONLY_HEAD`` leaves the optimizer with the head's parameters only."""

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from crbp_d2.rfpn.checkpoint import CheckpointFileError, RFPNCheckpointer, format_keys  # noqa: E402
from crbp_d2.rfpn.config import get_crbp_cfg  # noqa: E402
from crbp_d2.rfpn.modeling import freeze_all_but_mask_head  # noqa: E402
from crbp_d2.rfpn.train.trainer import Trainer  # noqa: E402

from detectron2.layers import FrozenBatchNorm2d  # noqa: E402

from crbp_d2.cli import train_net  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FPN = str(CONFIGS / "quick" / "FPN-synthetic.yaml")
FROM_FPN = str(CONFIGS / "quick" / "R-FPN-CRBP-from-FPN-synthetic.yaml")
SMOKE = str(CONFIGS / "quick" / "R-FPN-R50-CRBP-synthetic-test.yaml")
HEAD = "roi_heads.mask_head."


@pytest.fixture(scope="module")
def fpn_pkl(tmp_path_factory):
    """A model-zoo-layout .pkl of the quick FPN twin (random weights) and its state dict."""
    torch.manual_seed(3)
    fpn = Trainer.build_model(get_crbp_cfg(FPN, ["MODEL.DEVICE", "cpu"]))
    state = {k: v.detach().numpy().copy() for k, v in fpn.state_dict().items()}
    path = tmp_path_factory.mktemp("zoo") / "panoptic_fpn_quick.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "crbp-d2 tests"}, f)
    return str(path), state


def from_fpn_model(weights: str, *opts: str):
    cfg = get_crbp_cfg(FROM_FPN, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, *opts])
    return cfg, Trainer.build_model(cfg)


def test_feedforward_checkpoint_loads_all_but_the_mask_head(fpn_pkl, caplog):
    path, state = fpn_pkl
    cfg, model = from_fpn_model(path)
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(HEAD)}
    checkpointer = RFPNCheckpointer(model)
    with caplog.at_level(logging.INFO, logger="fvcore.common.checkpoint"):
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    report = checkpointer.last_report
    model_state = model.state_dict()
    file_head = sorted(k for k in state if k.startswith(HEAD))
    # the 4-conv head of the file: mask_fcn1..4, deconv, predictor (weight and bias)
    assert report.skipped_head == file_head and len(file_head) == 12
    assert any(".mask_fcn4." in k for k in file_head)
    # the recurrent head is new, everything else is loaded with the file's values
    assert report.new == [k for k in model_state if k.startswith(HEAD)]
    assert any(".engine.cell." in k for k in report.new)
    assert report.loaded == [k for k in model_state if not k.startswith(HEAD)]
    for key in report.loaded:
        np.testing.assert_array_equal(model_state[key].numpy(), state[key], err_msg=key)
    for key, value in fresh_head.items():  # untouched by the file (deconv/predictor too)
        torch.testing.assert_close(model_state[key], value, rtol=0, atol=0)
    # SOLVER.TRAIN_ONLY_HEAD made the backbone's BatchNorm FrozenBN: its step counters are not
    # loaded
    assert report.skipped_unused and all(
        k.endswith(".num_batches_tracked") and k.startswith("backbone.")
        for k in report.skipped_unused
    )
    assert report.skipped_shape == []
    # one log message that says all of it
    (message,) = [r.getMessage() for r in caplog.records if "keys loaded" in r.getMessage()]
    assert f"{len(report.loaded)} keys loaded" in message
    assert "skipped, the feedforward mask head" in message
    assert "roi_heads.mask_head.mask_fcn1.{bias,weight}" in message
    assert "newly initialised (" in message and "roi_heads.mask_head.engine" in message


def test_train_only_head_freezes_the_rest_and_the_optimizer_holds_the_head(fpn_pkl):
    cfg, model = from_fpn_model(fpn_pkl[0])
    head = {id(p) for p in model.roi_heads.mask_head.parameters()}
    assert head and all(p.requires_grad for p in model.roi_heads.mask_head.parameters())
    assert not any(p.requires_grad for p in model.parameters() if id(p) not in head)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    optimizer = Trainer.build_optimizer(cfg, model)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == head
    # without the key: the whole model trains
    _, whole = from_fpn_model(fpn_pkl[0], "SOLVER.TRAIN_ONLY_HEAD", "False")
    assert all(p.requires_grad for p in whole.backbone.bottom_up.res2.parameters())
    with pytest.raises(ValueError, match="no roi_heads.mask_head"):
        freeze_all_but_mask_head(whole.backbone)


def test_a_recurrent_checkpoint_loads_whole(tmp_path):
    """An R-FPN checkpoint (what --resume and --eval-only load) is not treated as feedforward."""
    cfg = get_crbp_cfg(SMOKE, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(1)
    source = Trainer.build_model(cfg)
    path = tmp_path / "rfpn.pth"
    torch.save({"model": source.state_dict(), "iteration": 7}, path)
    torch.manual_seed(2)
    target = Trainer.build_model(cfg)
    checkpointer = RFPNCheckpointer(target)
    checkpointer.load(str(path))
    report = checkpointer.last_report
    assert report.skipped_head == report.skipped_unused == report.new == []
    assert report.loaded == list(target.state_dict())
    head_key = next(k for k in report.loaded if ".engine.cell." in k)
    torch.testing.assert_close(target.state_dict()[head_key], source.state_dict()[head_key])


def test_missing_or_unreadable_checkpoint_is_one_line_naming_it(tmp_path, capsys):
    cfg = get_crbp_cfg(SMOKE, ["MODEL.DEVICE", "cpu"])
    model = Trainer.build_model(cfg)
    for name, content in (("garbage.pth", b"not a checkpoint"), ("garbage.pkl", b"\x80\x04junk")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointFileError) as error:
            RFPNCheckpointer(model).load(str(path))
        message = str(error.value)
        assert message.startswith(f"cannot read checkpoint {path}") and "\n" not in message
        assert "weights_only" not in message
    with pytest.raises(CheckpointFileError, match="checkpoint file not found: .*nope.pth"):
        RFPNCheckpointer(model).load(str(tmp_path / "nope.pth"))
    # the command line: one line on stderr, exit status 2
    with pytest.raises(SystemExit) as exit_info:
        train_net.main(
            ["--config-file", SMOKE, "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "garbage.pth"),
             "OUTPUT_DIR", str(tmp_path / "out")]
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    # refused when the config is built, before any model is made: one line naming the file
    assert err[-1].startswith("train_net.py: error: MODEL.WEIGHTS ")
    assert "garbage.pth" in err[-1] and "not a readable checkpoint" in err[-1]


def test_format_keys_groups_long_lists():
    short = ["a.b.weight", "a.b.bias", "c.weight"]
    assert format_keys(short) == "a.b.{bias,weight}, c.weight"
    long = [f"backbone.bottom_up.res{i}.conv.weight" for i in range(20)] + ["roi_heads.x.bias"]
    assert format_keys(long) == "backbone.bottom_up.*.weight (20), roi_heads.x.bias"
    assert format_keys([]) == "none"
