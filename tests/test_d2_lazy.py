"""LazyConfig: ``configs/lazy/*.py`` build the same models as the yacs configs (parameter names,
shapes, counts, buffers, every module's settings), the head's keys take ``add_crbp_config``'s
defaults, bad keys are one clear error, and ``tools/lazyconfig_train_net.py`` trains and evaluates
on the synthetic set (the smallest config: 64 px, 1 image, 2 steps)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")

from crbp_d2.rfpn.config import get_crbp_cfg  # noqa: E402
from crbp_d2.rfpn.lazy_config import build_engine_from_keys, recurrent_defaults  # noqa: E402
from crbp_d2.rfpn.modeling import build_recurrent_engine  # noqa: E402
from crbp_d2.rfpn.train import trainer_lazy as training_lazy  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from crbp_d2.cli import lazyconfig_train_net  # noqa: E402

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMOKE = str(CONFIGS / "lazy" / "quick" / "R-FPN-R50-CRBP-synthetic-test.py")


def settings(module: torch.nn.Module) -> dict:
    """The plain settings a module keeps (thresholds, sizes, names, the engine spec...), with
    OmegaConf containers made plain and lists of submodules left out."""
    out = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.nn.Module) for v in value):
            continue
        if isinstance(value, (int, float, str, bool, list, tuple, dict)) or (
            dataclasses.is_dataclass(value)
        ):
            out[key] = value
    # FastRCNNOutputLayers keeps {"loss_box_reg": w} from a yacs config and {"loss_cls": w,
    # "loss_box_reg": w} from its own default; a missing weight is 1.0 (``.get(k, 1.0)``)
    if isinstance(out.get("loss_weight"), dict) and "loss_box_reg" in out["loss_weight"]:
        out["loss_weight"] = {"loss_cls": 1.0, **out["loss_weight"]}
    return out


@pytest.mark.parametrize(
    "lazy, yacs",
    [("R-FPN-R50-CRBP.py", "R-FPN-R50-CRBP.yaml"), ("FPN-R50.py", "FPN-R50.yaml")],
)
def test_lazy_and_yacs_configs_build_the_same_model(lazy, yacs):
    lazy_cfg = LazyConfig.load(str(CONFIGS / "lazy" / lazy))
    lazy_cfg.train.device = "cpu"  # as MODEL.DEVICE below: the readout's SyncBN follows it
    lazy_model = instantiate(lazy_cfg.model)
    yacs_model = build_model(get_crbp_cfg(str(CONFIGS / yacs), ["MODEL.DEVICE", "cpu"]))
    params = {k: (tuple(p.shape), p.requires_grad) for k, p in lazy_model.named_parameters()}
    assert params == {
        k: (tuple(p.shape), p.requires_grad) for k, p in yacs_model.named_parameters()
    }
    count = sum(p.numel() for p in lazy_model.parameters())
    assert count == sum(p.numel() for p in yacs_model.parameters())
    assert count == {"R-FPN-R50-CRBP.py": 45_190_438, "FPN-R50.py": 45_973_990}[lazy]
    buffers = {k: tuple(b.shape) for k, b in lazy_model.state_dict().items()}
    assert buffers == {k: tuple(b.shape) for k, b in yacs_model.state_dict().items()}
    assert str(lazy_model) == str(yacs_model)  # every layer's hyper-parameters
    yacs_modules = dict(yacs_model.named_modules())
    assert set(yacs_modules) == {name for name, _ in lazy_model.named_modules()}
    for name, module in lazy_model.named_modules():
        assert settings(module) == settings(yacs_modules[name]), name
    if lazy.startswith("R-FPN"):
        head = lazy_model.roi_heads.mask_head
        assert head.engine.spec.steps == 20 and head.engine.spec.method == "crbp"
        assert head.lcp_weight == yacs_model.roi_heads.mask_head.lcp_weight == 1e-3


def test_lazy_head_keys_are_the_yacs_defaults():
    defaults = recurrent_defaults()
    node = get_crbp_cfg().MODEL.ROI_MASK_HEAD.RECURRENT
    assert defaults == {k: v for k, v in node.items() if k != "TRAIN_ONLY_HEAD"}
    cfg = LazyConfig.load(str(CONFIGS / "lazy" / "R-FPN-R50-CRBP.py"))
    engine = cfg.model.roi_heads.mask_head.engine
    assert {k: engine[k] for k in defaults} == defaults
    # the same engine as a yacs config with the same keys
    yacs = get_crbp_cfg("", ["MODEL.ROI_MASK_HEAD.RECURRENT.TIMESTEPS", "5"])
    yacs.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    yacs.MODEL.ROI_MASK_HEAD.RECURRENT.CELL_NORM_GROUPS = 8
    lazy = build_engine_from_keys(32, TIMESTEPS=5, CELL_NORM_GROUPS=8, LCP_WEIGHT=0)
    assert lazy.spec == build_recurrent_engine(yacs, 32).spec.replace(lcp_weight=0.0)
    assert str(lazy) == str(build_recurrent_engine(yacs, 32))


def test_bad_head_keys_are_one_clear_error():
    with pytest.raises(KeyError, match="RECURRENT.TIMESTEP .*Did you mean .*TIMESTEPS"):
        build_engine_from_keys(32, TIMESTEP=3, CELL_NORM_GROUPS=8)
    with pytest.raises(KeyError, match="set train.train_only_head instead"):
        build_engine_from_keys(32, TRAIN_ONLY_HEAD=True)
    with pytest.raises(ValueError, match="RECURRENT.GALA = 1: must be True or False"):
        build_engine_from_keys(32, GALA=1, CELL_NORM_GROUPS=8)
    with pytest.raises(ValueError, match="CELL_NORM = 'BN': batch norms cannot be inside"):
        build_engine_from_keys(32, CELL_NORM="BN")


def test_command_line_rejects_unknown_keys_and_missing_files(tmp_path, capsys):
    argv = ["--config-file", SMOKE, f"train.output_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        lazyconfig_train_net.main(argv + ["model.roi_heads.mask_head.engine.TIMESTEP=4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "lazyconfig_train_net.py: error: Non-existent config key: "
        "model.roi_heads.mask_head.engine.TIMESTEP"
    )
    assert "model.roi_heads.mask_head.engine.TIMESTEPS" in err
    with pytest.raises(SystemExit):
        lazyconfig_train_net.main(argv + [f"train.init_checkpoint={tmp_path}/nope.pth"])
    assert "train.init_checkpoint file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lazyconfig_train_net.main(argv + ["dataloader.test.dataset.names=synthetic_panoptic_vall"])
    assert (
        "error: Unknown dataset name(s) in dataloader.test.dataset.names: "
        "'synthetic_panoptic_vall'" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        lazyconfig_train_net.main(argv + ["model.roi_heads.num_classes=80"])
    assert "model.roi_heads.num_classes is 80 but dataset" in capsys.readouterr().err
    # +key=value adds a key on purpose
    args = lazyconfig_train_net.parse_args(argv + ["+train.note=hello"])
    assert training_lazy.build_lazy_config(args).train.note == "hello"


def test_lazy_train_only_head_freezes_the_rest():
    cfg = LazyConfig.load(SMOKE)
    cfg.train.train_only_head = True
    model = training_lazy._build_model(cfg)
    head = {id(p) for p in model.roi_heads.mask_head.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == head and head


def test_lazy_training_step_then_evaluation_on_the_synthetic_set(tmp_path):
    out = tmp_path / "run"
    args = lazyconfig_train_net.parse_args(
        ["--config-file", SMOKE, f"train.output_dir={out}", "train.max_iter=1"]
    )
    assert training_lazy.train_or_evaluate_lazy(args) is None
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained = [line for line in lines if "loss_mask" in line]
    assert trained and math.isfinite(trained[0]["loss_lcp"]) and "crbp/residual" in trained[0]
    assert any("panoptic_seg/PQ" in line for line in lines)  # evaluated after the last step
    # the saved config loads again, and --eval-only evaluates the checkpoint
    assert LazyConfig.load(str(out / "config.yaml")).model.roi_heads.mask_head.engine.TIMESTEPS == 3
    args = lazyconfig_train_net.parse_args(
        ["--config-file", SMOKE, "--eval-only", f"train.output_dir={out}/eval",
         f"train.init_checkpoint={out}/model_final.pth"]
    )  # fmt: skip
    results = training_lazy.train_or_evaluate_lazy(args)
    assert {"panoptic_seg", "bbox", "segm", "sem_seg"} <= set(results)
    # the checkpoint evaluated again gives what the evaluation after the last step gave
    after_training = next(line for line in lines if "panoptic_seg/PQ" in line)
    for task, metric in (("panoptic_seg", "PQ"), ("segm", "AP"), ("sem_seg", "mIoU")):
        want = after_training[f"{task}/{metric}"]
        assert results[task][metric] == pytest.approx(want, abs=1e-9, nan_ok=True), (task, metric)
    last = json.loads((out / "eval" / "metrics.json").read_text().splitlines()[-1])
    assert last["eval_only"] is True and "segm/AP" in last


def test_lazy_training_stops_on_a_non_finite_loss_naming_it(tmp_path, monkeypatch, capsys):
    from helpers import _nan_from_iteration

    _nan_from_iteration(monkeypatch, "loss_mask", 1)
    argv = ["--config-file", SMOKE, f"train.output_dir={tmp_path}", "train.max_iter=3",
            "train.checkpointer.period=1", "train.eval_period=0"]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        lazyconfig_train_net.main(argv)
    assert info.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        "lazyconfig_train_net.py: error: training stopped: loss_mask = nan at iteration 1 "
    ), line
    assert "last: model_0000000.pth" in line and (tmp_path / "model_0000000.pth").is_file()
