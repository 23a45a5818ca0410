"""Pathfinder analyses: state-space maths on known cases, and every command end to end."""

import importlib
import json
import os

import numpy as np
import pytest
from helpers import reference_baseline_scores

from crbp_d2.cli.pathfinder_args import parse_named_paths
from crbp_d2.pathfinder.config import load_config
from crbp_d2.pathfinder.data.datasets import marker_radius_at_input
from crbp_d2.pathfinder.evaluation.analysis import (
    load_trained,
    make_test_loader,
    pca_fit,
    state_space,
)
from crbp_d2.pathfinder.evaluation.baselines import dataset_pairs
from crbp_d2.pathfinder.evaluation.evaluator import evaluate_at, iou_over_steps
from crbp_d2.pathfinder.train.loop import Trainer

# the baselines apart from crbp_d2 vs the tool's: measured difference 0 on this test set, <= 7.1e-4
# on 24 PF9 images at 150 px (a marker found 1 px apart; tests/test_pathfinder_data.py); ~3x that
TOL = 2e-3

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")


def load_tool(name):
    return importlib.import_module(f"crbp_d2.cli.{name}")


def test_pca_fit_recovers_a_known_direction():
    rng = np.random.default_rng(0)
    data = np.outer(rng.normal(size=500) * 3, [1.0, 0.0, 0.0]) + rng.normal(size=(500, 3)) * 0.1
    mean, basis, explained = pca_fit(data, 2)
    assert basis.shape == (3, 2)
    assert abs(abs(basis[0, 0]) - 1) < 1e-3
    assert explained[0] > 0.99


def test_state_space_distance_and_ks_on_known_trajectories():
    rng = np.random.default_rng(0)
    images, steps, dim = 40, 10, 6
    converged = np.repeat(rng.normal(size=(images, 1, dim)), steps, axis=1)
    drifting = converged + np.linspace(0, 5, steps)[None, :, None] * rng.normal(
        size=(images, 1, dim)
    )
    result = state_space(
        {"crbp": converged, "bptt": drifting}, {"crbp": 4, "bptt": 4}, components=2
    )
    crbp, bptt = result["models"]["crbp"], result["models"]["bptt"]
    assert np.allclose(crbp["pca_distance"], 0) and np.allclose(crbp["raw_distance"], 0)
    assert bptt["pca_distance"].min() > 0
    # the distance is the mean over PCA dims of the squared difference (the authors' definition)
    z = bptt["projected"]
    assert np.allclose(bptt["pca_distance"], ((z[:, 3] - z[:, -1]) ** 2).mean(1))
    ks = [k for k in result["ks"] if k["distance"] == "pca_distance"][0]
    assert ks["statistic"] == 1.0 and ks["p_value"] < 1e-6
    with pytest.raises(ValueError, match="comparison step 11"):
        state_space({"a": converged}, {"a": 11})


def test_parse_named_paths():
    assert parse_named_paths(["a=x/best.pth", "out/run/best.pth"]) == {
        "a": "x/best.pth",
        "run": "out/run/best.pth",
    }
    with pytest.raises(ValueError, match="given twice"):
        parse_named_paths(["a=1", "a=2"])


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("pf")
    (out / "data.yaml").write_text("DATA: {GENERATOR: {padding: 10, num_distractors: 2}}\n")
    cfg = load_config(
        str(out / "data.yaml"),
        [
            "OUTPUT_DIR",
            str(out / "run"),
            "MODEL.CHANNELS",
            4,
            "MODEL.RECURRENT.KERNEL_SIZE",
            3,
            "MODEL.RECURRENT.TIMESTEPS",
            3,
            "SOLVER.BATCH_SIZE",
            4,
            "SOLVER.EPOCHS",
            1,
            "MODEL.RECURRENT.METHOD",
            "crbp",
            "DATA.SOURCE",
            "on_the_fly",
            "DATA.TRAIN_SIZE",
            8,
            "DATA.TEST_SIZE",
            8,
            "DATA.TRAIN_LENGTH",
            6,
            "DATA.TEST_LENGTH",
            6,
            "DATA.CANVAS_SIZE",
            128,
            "DATA.IMAGE_SIZE",
            32,
            "TEST.BATCH_SIZE",
            8,
            "TEST.SPECTRAL_RADIUS_ITERS",
            0,
            "NUM_THREADS",
            1,
        ],
    )
    Trainer(cfg, progress=False).train()
    return str(out / "run" / "best.pth"), out


def test_iou_over_steps_matches_the_evaluation_at_each_step(trained_checkpoint):
    path, _ = trained_checkpoint
    model, cfg = load_trained(path)
    loader = make_test_loader(cfg, batch_size=8)
    rows = iou_over_steps(model, loader, 5)
    assert [r["steps"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert rows[4]["iou"] == pytest.approx(evaluate_at(model, loader, 4)["iou"], abs=1e-12)


def test_every_analysis_command_writes_its_files(trained_checkpoint):
    path, out = trained_checkpoint
    stem = str(out / "gen")
    assert (
        load_tool("pathfinder_generalization").main(
            [
                "--checkpoints",
                f"m={path}",
                "--out",
                stem,
                "--lengths",
                "6",
                "9",
                "--test-size",
                "8",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    records = json.load(open(stem + ".json"))
    assert [(r["train_length"], r["test_length"]) for r in records] == [(6, 6), (6, 9)]
    assert os.path.isfile(stem + ".png") and os.path.isfile(stem + ".csv")

    stem = str(out / "steps")
    assert (
        load_tool("pathfinder_steps").main(
            ["--checkpoints", f"m={path}", "--out", stem, "--max-steps", "6", "--batch-size", "8"]
        )
        == 0
    )
    records = json.load(open(stem + ".json"))
    assert len([r for r in records if r["model"] == "m"]) == 7 and os.path.isfile(stem + ".png")
    baselines = {r["model"]: r["iou"] for r in records if r["method"] == "baseline"}
    assert set(baselines) == {"marker only", "all ink", "flood fill"}
    # the baselines computed apart (numpy / scipy.ndimage) on the model's test images: pooled
    # IoU of marker only (0.514 here), and of the best flood fill by pooled IoU (radii 1-4, the
    # tool's; 0.676 here)
    _, cfg = load_trained(path)
    pairs = list(dataset_pairs(make_test_loader(cfg, batch_size=8).dataset))
    reference = reference_baseline_scores(pairs, marker_radius_at_input(cfg), (1, 2, 3, 4))
    flood = max(reference[f"flood_fill_k{r}"]["iou"] for r in (1, 2, 3, 4))
    assert baselines["marker only"] == pytest.approx(reference["marker_only"]["iou"], abs=TOL)
    assert baselines["flood fill"] == pytest.approx(flood, abs=TOL)
    ink = [(image > 0.2, label) for image, label in pairs]
    pooled = sum((i & lab).sum() for i, lab in ink) / sum((i | lab).sum() for i, lab in ink)
    assert baselines["all ink"] == pytest.approx(float(pooled), abs=1e-9)

    stem = str(out / "space")
    assert (
        load_tool("pathfinder_state_space").main(
            [
                "--checkpoints",
                f"a={path}",
                f"b={path}",
                "--out",
                stem,
                "--max-steps",
                "6",
                "--images",
                "8",
                "--batch-size",
                "8",
                "--pool",
                "4",
                "--compare-step",
                "b=5",
            ]
        )
        == 0
    )
    summary = json.load(open(stem + ".json"))
    assert summary["models"]["b"]["compare_step"] == 5 and summary["ks"]
    assert os.path.isfile(stem + ".png") and os.path.isfile(stem + "_distances.csv")

    stem = str(out / "course")
    assert (
        load_tool("pathfinder_timecourse").main(
            ["--checkpoint", path, "--out", stem, "--max-steps", "5", "--batch-size", "8"]
        )
        == 0
    )
    assert len(json.load(open(stem + ".json"))["iou_per_step"]) == 5 and os.path.isfile(
        stem + ".png"
    )


def test_analysis_commands_report_a_missing_checkpoint(tmp_path, capsys):
    code = load_tool("pathfinder_steps").main(
        ["--checkpoints", "m=/nonexistent/best.pth", "--out", str(tmp_path / "x")]
    )
    assert code == 2
    assert "checkpoint not found: /nonexistent/best.pth" in capsys.readouterr().err


def test_eval_only_evaluates_the_weights_at_the_asked_steps(trained_checkpoint, capsys):
    path, out = trained_checkpoint
    config = str(out / "run" / "config.yaml")  # the trainer's dump of the run's config
    code = load_tool("train_pathfinder").main(
        ["--config-file", config, "--eval-only", "--eval-steps", "5", "--no-progress"]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.load(open(out / "run" / "eval_only.json"))
    assert written["weights"] == path and written["results"] == printed
    assert list(printed) == ["3", "5"]
    model, cfg = load_trained(path)
    loader = make_test_loader(cfg, batch_size=cfg.TEST.BATCH_SIZE)
    for steps in (3, 5):
        expected = evaluate_at(model, loader, steps)["iou"]
        assert printed[str(steps)]["iou"] == pytest.approx(expected, abs=1e-12)
