"""End to end on CPU: the train_net program (train -> checkpoint -> --resume -> --eval-only), the
timestep sweep and the demo on the synthetic panoptic dataset, with a tiny config (64 px, 1 image
per step, 3 recurrent steps) so the whole module takes well under two minutes."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2")

from crbp_d2.rfpn import visualization  # noqa: E402
from crbp_d2.rfpn.evaluation import timestep_sweep  # noqa: E402
from crbp_d2.rfpn.train import trainer as training  # noqa: E402

import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from helpers import _nan_from_iteration, ground_truth_outputs  # noqa: E402

from crbp_d2.cli import demo, train_net  # noqa: E402
from crbp_d2.cli import timestep_sweep as sweep_cli  # noqa: E402

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "quick" / "R-FPN-R50-CRBP-synthetic-test.yaml")
TEST_SET = "synthetic_panoptic_val_separated"  # the config's DATASETS.TEST


def train_args(output: Path, *flags: str, opts=()):
    return train_net.parse_args(["--config-file", CONFIG, *flags, "OUTPUT_DIR", str(output), *opts])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Train 2 iterations (no evaluation), then resume to 3; returns the output folder."""
    output = tmp_path_factory.mktemp("rfpn_e2e")
    training.train_or_evaluate(train_args(output, opts=("DATASETS.TEST", "()")))
    first = torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)
    assert first["iteration"] == 1  # iterations 0 and 1
    training.train_or_evaluate(
        train_args(output, "--resume", opts=("DATASETS.TEST", "()", "SOLVER.MAX_ITER", "3"))
    )
    resumed = torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)
    assert resumed["iteration"] == 2  # resumed at iteration 2, not restarted from 0
    assert resumed["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 3  # scheduler state kept
    metrics = (output / "metrics.json").read_text().splitlines()
    assert any('"crbp/residual"' in line and '"loss_lcp"' in line for line in metrics)
    return output


def test_log_file_holds_the_config_without_colour_codes(trained):
    """Detectron2 colours its config dumps with pygments; off a terminal they are logged plain,
    so log.txt (and make demo's log files) hold no ANSI codes."""
    text = (trained / "log.txt").read_text()
    assert "Running with full config" in text and "ROI_MASK_HEAD:" in text
    assert "\x1b[" not in text


def test_eval_only_gives_finite_pq_and_ap(trained):
    weights = str(trained / "model_final.pth")
    results = training.train_or_evaluate(
        train_args(
            trained / "eval",
            "--eval-only",
            opts=("MODEL.WEIGHTS", weights, "TEST.GT_BOX_MASKS", "True"),
        )
    )
    assert set(results) == {"panoptic_seg", "bbox", "segm", "sem_seg", "gt_box"}
    gt_box = results["gt_box"]
    # every ground-truth instance of the test set is scored once (counted here from the records)
    test_set = DatasetCatalog.get(TEST_SET)
    instances = sum(not a.get("iscrowd", 0) for r in test_set for a in r["annotations"])
    assert gt_box["instances"] == instances > 0
    assert math.isfinite(gt_box["mIoU"]) and math.isfinite(gt_box["mBF"])
    assert {"IoU-circle", "BF-star"} <= set(gt_box)
    # --eval-only results also go to metrics.json, flattened as during training
    line = (trained / "eval" / "metrics.json").read_text().splitlines()[-1]
    assert '"gt_box/mIoU"' in line and '"panoptic_seg/PQ"' in line
    for task, metric in (
        ("panoptic_seg", "PQ"),
        ("panoptic_seg", "PQ_th"),
        ("bbox", "AP"),
        ("segm", "AP"),
        ("sem_seg", "mIoU"),
    ):
        assert math.isfinite(results[task][metric]), (task, metric)
    # the values themselves: test_eval_only_scores_ground_truth_predictions_at_100 (same path)


def test_eval_only_scores_ground_truth_predictions_at_100(trained, monkeypatch):
    """--eval-only with a model whose predictions are the ground truth of each test image: by the
    definitions of PQ, AP and mIoU every metric is 100 (a value that owes nothing to the code
    under test: the run's config, data, evaluators, aggregation and metrics.json line)."""
    build_model = training.Trainer.build_model

    def oracle(cfg):
        model = build_model(cfg)
        name = cfg.DATASETS.TEST[0]
        metadata = MetadataCatalog.get(name)
        records = {r["image_id"]: r for r in DatasetCatalog.get(name)}
        model.forward = lambda inputs: [
            ground_truth_outputs(records[x["image_id"]], metadata) for x in inputs
        ]
        return model

    monkeypatch.setattr(training.Trainer, "build_model", staticmethod(oracle))
    output = trained / "eval_oracle"
    results = training.train_or_evaluate(
        train_args(
            output,
            "--eval-only",
            opts=("MODEL.WEIGHTS", str(trained / "model_final.pth"), "TEST.GT_BOX_MASKS", "False"),
        )
    )
    assert set(results) == {"panoptic_seg", "bbox", "segm", "sem_seg"}
    metrics = [("panoptic_seg", k) for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")]
    metrics += [("bbox", "AP"), ("segm", "AP"), ("sem_seg", "mIoU")]
    # exact in real arithmetic; measured error 0 (means of 1.0 * 100); margin: float rounding
    for task, metric in metrics:
        assert results[task][metric] == pytest.approx(100.0, abs=1e-9), (task, metric)
    line = json.loads((output / "metrics.json").read_text().splitlines()[-1])
    assert line["eval_only"] and line["panoptic_seg/PQ"] == results["panoptic_seg"]["PQ"]


def test_timestep_sweep_writes_csv_and_plot_and_onepass_equals_rerun(trained):
    weights = str(trained / "model_final.pth")
    columns = timestep_sweep.COLUMNS + (timestep_sweep.AP_COLUMN,) + timestep_sweep.GT_BOX_COLUMNS
    rows = {}
    for mode in ("onepass", "rerun"):
        out = trained / f"sweep_{mode}"
        args = sweep_cli.parse_args(
            ["--config-file", CONFIG, "--output", str(out), "--steps", "1-2", "--mode", mode,
             "--segm-ap", "--gt-box", "MODEL.WEIGHTS", weights]
        )  # fmt: skip
        rows[mode] = sweep_cli.run(args)
        assert (out / "timestep_sweep.png").stat().st_size > 1000
        lines = (out / "timestep_sweep.csv").read_text().splitlines()
        assert lines[0] == ",".join(columns) and len(lines) == 3
    assert [r["steps"] for r in rows["onepass"]] == [1, 2]
    # one pass at 2 steps, read out per step == one full evaluation per step count
    for fast, slow in zip(rows["onepass"], rows["rerun"]):
        for key in columns:
            assert math.isfinite(fast[key])
            assert fast[key] == pytest.approx(slow[key], abs=1e-6), key


def test_demo_writes_panoptic_and_timecourse_images(trained):
    import cv2
    from detectron2.data import MetadataCatalog

    images = sorted(
        Path(MetadataCatalog.get("synthetic_panoptic_val_separated").image_root).glob("*.jpg")
    )
    inputs = trained / "inputs"
    inputs.mkdir()
    for image in images[:2]:
        (inputs / image.name).write_bytes(image.read_bytes())
    (inputs / "notes.png").write_text("not an image")  # skipped with a warning
    (inputs / "cut.jpg").write_bytes(images[2].read_bytes()[:200])  # truncated: skipped too
    out = trained / "demo"
    weights = str(trained / "model_final.pth")
    args = demo.parse_args(
        ["--config-file", CONFIG, "--input", str(inputs), "--output", str(out),
         "--confidence-threshold", "0.0", "--timecourse", "--opts", "MODEL.WEIGHTS", weights]
    )  # fmt: skip
    written = demo.run(args)
    assert len(written) == 4 and all(os.path.getsize(p) > 1000 for p in written)
    assert written[1].endswith("_timecourse.png") and cv2.imread(written[1]).shape[2] == 3


def test_a_randomly_initialised_model_is_not_evaluated_unless_asked(tmp_path):
    with pytest.raises(ValueError, match="--eval-only without MODEL.WEIGHTS would evaluate"):
        training.build_config(train_args(tmp_path, "--eval-only"))
    assert training.build_config(train_args(tmp_path, "--eval-only", "--random-weights"))
    args = demo.parse_args(["--config-file", CONFIG, "--input", str(tmp_path), "--output", "x"])
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty: the demo would draw"):
        demo.run(args)


def test_timecourse_shows_each_confident_detection_in_its_own_row():
    from detectron2.data import MetadataCatalog
    from detectron2.structures import Boxes, Instances

    instances = Instances(
        (64, 64),
        pred_boxes=Boxes(torch.tensor([[4.0, 4, 30, 30], [10, 10, 50, 40], [0, 0, 20, 20]])),
        scores=torch.tensor([0.9, 0.2, 0.7]),
        pred_classes=torch.tensor([0, 1, 2]),
        pred_masks_steps=torch.rand(3, 12, 28, 28),
    )
    confident, steps = visualization.timecourse_layout(instances, 0.5, max_steps=8)
    assert confident.scores.tolist() == pytest.approx([0.9, 0.7])  # rows, highest first
    assert steps[0] == 1 and steps[-1] == 12 and len(steps) == 8
    rgb = np.zeros((64, 64, 3), np.uint8)
    metadata = MetadataCatalog.get("synthetic_panoptic_val_separated")
    two_rows = visualization.render_timecourse(rgb, instances, metadata, 0.5)
    one_row = visualization.render_timecourse(rgb, instances, metadata, 0.8)
    assert two_rows.shape[1] == one_row.shape[1] and two_rows.shape[0] > 1.5 * one_row.shape[0]
    none = visualization.render_timecourse(rgb, instances, metadata, 0.95)  # says so, no crash
    assert none.ndim == 3


def test_missing_weights_file_is_one_clear_error(tmp_path, capsys):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS file not found: .*nope.pth"):
        training.train_or_evaluate(
            train_args(tmp_path, "--eval-only", opts=("MODEL.WEIGHTS", missing))
        )
    with pytest.raises(SystemExit) as exit_info:  # the command line reports it in one line
        train_net.main(["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", missing])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train_net.py: error: MODEL.WEIGHTS file not found")
    with pytest.raises(SystemExit):
        demo.main(
            [
                "--config-file",
                CONFIG,
                "--input",
                str(tmp_path),
                "--output",
                str(tmp_path),
                "--opts",
                "MODEL.WEIGHTS",
                missing,
            ]
        )
    assert "demo.py: error: MODEL.WEIGHTS file not found" in capsys.readouterr().err


def test_unknown_dataset_and_unknown_key_are_one_clear_error(tmp_path, capsys):
    with pytest.raises(
        KeyError,
        match="Unknown dataset name.*'synthetic_panoptic_vall'.*synthetic_panoptic_val_separated",
    ):
        training.train_or_evaluate(
            train_args(tmp_path, opts=("DATASETS.TEST", "('synthetic_panoptic_vall',)"))
        )
    with pytest.raises(SystemExit):
        train_net.main(["--config-file", CONFIG, "MODEL.ROI_MASK_HEAD.RECURRENT.STEPS", "3"])
    assert (
        "train_net.py: error: Non-existent config key: MODEL.ROI_MASK_HEAD.RECURRENT.STEPS"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        train_net.main(
            ["--config-file", CONFIG, "MODEL.ROI_MASK_HEAD.RECURRENT.CELL_NORM", "SyncBN"]
        )
    assert "CELL_NORM = 'SyncBN': batch norms cannot be inside" in capsys.readouterr().err


def test_timestep_sweep_step_lists():
    assert timestep_sweep.parse_steps("1-3,10") == [1, 2, 3, 10]
    assert timestep_sweep.parse_steps("5,2,2") == [2, 5]
    for bad in ("0-2", "a", "3-x", ","):
        with pytest.raises(ValueError):
            timestep_sweep.parse_steps(bad)
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error, exit status 2
        sweep_cli.parse_args(["--config-file", CONFIG, "--output", "out", "--steps", "0-2"])
    assert exit_info.value.code == 2


def test_resume_and_eval_only_may_follow_the_overrides():
    args = train_net.parse_args(["--config-file", CONFIG, "SOLVER.MAX_ITER", "3", "--resume"])
    assert args.resume and args.opts == ["SOLVER.MAX_ITER", "3"]
    args = train_net.parse_args(["--config-file", CONFIG, "MODEL.WEIGHTS", "w.pth", "--eval-only"])
    assert args.eval_only and not args.resume and args.opts == ["MODEL.WEIGHTS", "w.pth"]


NAN_RUN = ("DATASETS.TEST", "()", "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "1")


def test_a_non_finite_loss_stops_training_naming_the_term_and_iteration(tmp_path, monkeypatch):
    _nan_from_iteration(monkeypatch, "loss_mask", 2)
    with pytest.raises(training.NonFiniteLossError) as info:
        training.train_or_evaluate(train_args(tmp_path, opts=NAN_RUN))
    message = str(info.value)
    assert message.startswith("loss_mask = nan at iteration 2 (the other terms: ")
    assert "loss_cls = " in message and "loss_lcp = " in message and "\n" not in message
    assert f"the checkpoints in {tmp_path} are kept (last: model_0000001.pth;" in message
    # The checkpoints of iterations 0 and 1 are kept, the last one is intact and finite (the
    # NaN iteration never reached the optimizer step), and nothing was saved after it.
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "model_0000000.pth",
        "model_0000001.pth",
    ]
    last = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert last["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_cli_reports_a_non_finite_loss_in_one_line(tmp_path, monkeypatch, capsys):
    _nan_from_iteration(monkeypatch, "loss_lcp", 1)
    argv = ["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path), *NAN_RUN]
    with pytest.raises(SystemExit) as info:
        train_net.main(argv)
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(
        "train_net.py: error: training stopped: loss_lcp = nan at iteration 1"
    )
    assert "last: model_0000000.pth" in lines[-1]
    assert (tmp_path / "model_0000000.pth").is_file()
