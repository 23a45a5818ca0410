"""The extrapolation protocol (issue 17): longer test sets, controls, per-step records, resuming."""

import dataclasses
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader

from crbp_d2.contours.stats import path_statistics
from crbp_d2.pathfinder.evaluation.evaluator import evaluate_at
from crbp_d2.pathfinder.experiments import extrapolation as ex
from crbp_d2.pathfinder.modeling import build_model, count_parameters

SHAPE_FIELDS = (
    "paddle_length",
    "paddle_thickness",
    "paddle_margin",
    "continuity",
    "marker_radius",
    "seed_distance",
    "padding",
    "antialias_scale",
)


def _cfg(model="crbp", smoke=False, **kwargs):
    return ex.run_config(ex.Settings(smoke=smoke, **kwargs), model, 0)


@pytest.mark.parametrize("length", [14, 20, 25])
def test_longer_sets_keep_the_training_paddles_and_density(length):
    cfg = _cfg()
    train, train_size = ex.length_params(cfg, 9)
    longer, size = ex.length_params(cfg, length)
    assert (train.canvas_size, train_size) == (128, 64)  # the training set itself
    for field in SHAPE_FIELDS:
        assert getattr(longer, field) == getattr(train, field), field
    # the same downscaling (so the same paddle width in input pixels)
    assert size / longer.canvas_size == train_size / train.canvas_size
    # the canvas grows with the length, the distractors with the canvas area
    assert longer.canvas_size >= train.canvas_size * length / 9
    density = longer.num_distractors / longer.canvas_size**2
    assert density == pytest.approx(train.num_distractors / train.canvas_size**2, rel=0.1)
    # measured on generated samples: the same dash pitch, and contours that fill the canvas the
    # same way (end-to-end extent / canvas side)
    measured_train = path_statistics(train, seed=1, num=8)
    measured = path_statistics(longer, seed=1, num=8)
    for key in ("pitch_min", "pitch_max"):
        assert measured[key] == pytest.approx(measured_train[key], abs=1e-6), key
    assert measured["pitch_mean"] == pytest.approx(measured_train["pitch_mean"], rel=0.05)
    extent = measured["end_to_end_p50"] / longer.canvas_size
    assert extent == pytest.approx(measured_train["end_to_end_p50"] / train.canvas_size, rel=0.3)
    assert measured["distractors_placed_mean"] == pytest.approx(longer.num_distractors, rel=0.1)


def test_test_sets_are_cached_and_identical(tmp_path):
    cfg = _cfg()
    first = ex.build_test_set(cfg, 14, 3, str(tmp_path))
    assert len(os.listdir(tmp_path)) == 1
    again = ex.build_test_set(cfg, 14, 3, str(tmp_path))
    assert first.images.shape == (3, 1, 100, 100)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    image, label = again[1]
    assert image.shape == (1, 100, 100) and label.shape == (100, 100) and label.sum() > 0


def test_controls_parameter_counts():
    counts = {m.key: count_parameters(build_model(_cfg(m.key))) for m in ex.MODELS}
    hgru = counts["crbp"]
    assert hgru == 8270
    assert {counts[k] for k in ("rbp", "bptt", "cbptt")} == {hgru}  # one weight-tied hGRU
    assert abs(counts["cnn"] - hgru) / hgru < 0.05  # the CNN control at ~1x
    assert counts["cnn_x4"] >= 3 * hgru  # and at >= 3x
    # the feed-forward hGRU: 6 cells with their own weights around the same input and readout
    cell = sum(p.numel() for p in build_model(_cfg("crbp")).engine.cell.parameters())
    assert counts["ff_hgru"] == hgru + 5 * cell


@pytest.mark.parametrize("model", ["cnn", "cnn_x4"])
def test_cnn_receptive_field_is_55_pixels(model):
    """The configs' comments state 55 px of the 64-px input: measured by the input gradient of
    the centre output (running BN statistics, so pixels do not mix through the batch)."""
    net = build_model(_cfg(model)).eval()
    image = torch.rand(1, 1, 97, 97, requires_grad=True)
    net(image).logits[0, 1, 48, 48].backward()
    rows = torch.nonzero(image.grad[0, 0].abs().sum(1)).flatten()
    assert int(rows.max() - rows.min() + 1) == 55


def test_recurrent_records_cover_every_step_in_one_pass(tmp_path):
    settings = ex.Settings(
        out_dir=str(tmp_path), results_dir=str(tmp_path / "r"), smoke=True, test_size=4,
        test_lengths=(9, 14), shared_machine=True,
    )  # fmt: skip
    cfg = ex.run_config(settings, "crbp", 0)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    records = ex.evaluate_run(model, cfg, settings, "C-RBP", "crbp")
    n = cfg.MODEL.RECURRENT.TIMESTEPS
    for length in (9, 14):
        steps = [r["steps"] for r in records if r["test_length"] == length]
        assert steps == list(range(1, 3 * n + 1))
    needed = {"model", "method", "params", "seed", "train_length", "test_length", "steps", "iou"}
    assert needed <= set(records[0]) and records[0]["shared_machine"] is True
    assert records[0]["method"] == "crbp" and records[0]["train_length"] == 9
    # the one-pass readout at N equals a separate run of N steps (BN: the same test batches)
    dataset = ex.build_test_set(cfg, 14, 4, settings.cache_dir)
    loader = DataLoader(dataset, batch_size=cfg.TEST.BATCH_SIZE)
    alone = evaluate_at(model, loader, n)["iou"]
    at_n = [r for r in records if r["test_length"] == 14 and r["steps"] == n][0]["iou"]
    assert at_n == pytest.approx(alone, abs=1e-6)
    # the full protocol reads out to max(3N, 60)
    assert ex.eval_steps(dataclasses.replace(settings, smoke=False), n) == 60


def test_smoke_protocol_writes_the_report_and_resumes(tmp_path):
    settings = ex.Settings(
        out_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "results"), smoke=True,
        models=("crbp", "cnn"), seeds=(0,), test_lengths=(9, 14), test_size=4,
    )  # fmt: skip
    assert ex.pending_runs(settings) == [("crbp", 0), ("cnn", 0)]
    for model, seed in ex.pending_runs(settings):
        ex.train_and_evaluate(settings, model, seed, log=lambda _: None)
    assert ex.pending_runs(settings) == []
    ex.write_report(settings, log=lambda _: None)
    stem = os.path.join(settings.results_dir, ex.STEM)
    with open(stem + ".json") as f:
        report = json.load(f)
    models = {r["model"] for r in report["records"]}
    assert models == {"crbp", "cnn", "marker_only", "all_ink", "flood_fill"}
    # a baselines cache written before "all ink" existed is computed again, not trusted
    cache = os.path.join(settings.runs_dir, "baselines.json")
    with open(cache) as f:
        stored = json.load(f)
    complete = stored["records"]
    stored["records"] = [r for r in complete if r["model"] != "all_ink"]
    with open(cache, "w") as f:
        json.dump(stored, f)
    assert ex.baseline_records(settings) == complete
    assert set(report["hypotheses"]) == {"H1", "H2", "H3"}
    assert report["hypotheses"]["H1"]["verdict"] == "not yet measured"  # no PF20, no ff_hgru
    text = open(stem + ".md").read()
    assert "PF14: 200 px -> 100 px" in text and "H3 not yet measured" in text
    hours = sum(r["train_seconds"] + r["eval_seconds"] for r in report["runs"]) / 3600
    assert f"the recorded runs took {hours:.1f} h of 1-thread jobs" in text
    rows = ex.summary_rows(report["records"])
    margin = ex._find(rows, "crbp", 14)["iou_at_3N"] - ex._find(rows, "all_ink", 14)["iou"]
    assert f"PF14 {margin:+.3f}" in text.split("Tracing check")[1].split("\n")[0]
    assert os.path.getsize(stem + ".png") > 0
    # other overrides = other runs: the records no longer count as finished
    changed = dataclasses.replace(settings, overrides=("SOLVER.LR", "0.02"))
    assert ex.pending_runs(changed) == [("crbp", 0), ("cnn", 0)]


def test_protocol_time_counts_resumed_training_at_the_models_from_scratch_mean():
    def run(model, train, evaluation, resumed=False):
        return dict(model=model, train_seconds=train, eval_seconds=evaluation, resumed=resumed)

    runs = [
        run("crbp", 100.0, 10.0),
        run("crbp", 300.0, 20.0),
        run("crbp", 5.0, 30.0, resumed=True),  # counted at (100 + 300) / 2, not 5
        run("cnn", 40.0, 1.0),
    ]
    seconds, unmeasured = ex.protocol_seconds_from_scratch(runs)
    assert seconds == pytest.approx(100 + 300 + 200 + 40 + 10 + 20 + 30 + 1)
    assert unmeasured == []
    # a model whose every run was resumed: its training is left out and named
    runs += [run("bptt", 2.0, 7.0, resumed=True), run("bptt", 3.0, 8.0, resumed=True)]
    seconds, unmeasured = ex.protocol_seconds_from_scratch(runs)
    assert seconds == pytest.approx(100 + 300 + 200 + 40 + 10 + 20 + 30 + 1 + 7 + 8)
    assert unmeasured == ["bptt"]


def _row(model, length, at_n=None, at_3n=None, iou=None, recurrent=True):
    row = {"model": model, "label": model, "test_length": length, "recurrent": recurrent}
    if recurrent:
        row.update(iou_at_N=at_n, iou_at_3N=at_3n)
    else:
        row.update(iou=iou)
    return row


def test_hypotheses_verdicts():
    rows = []
    for length in (14, 20, 25):
        rows += [
            _row("crbp", length, 0.80, 0.81),
            _row("rbp", length, 0.80, 0.70),
            _row("bptt", length, 0.80, 0.60),
        ]
        rows += [_row(m, length, iou=0.70, recurrent=False) for m in ex.FEEDFORWARD]
    tests = ex.hypotheses(rows)
    assert [tests[h]["verdict"] for h in ("H1", "H2", "H3")] == ["held"] * 3
    rows[3]["iou"] = 0.78  # a control within 0.05 of C-RBP on PF14
    rows[2]["iou_at_3N"] = 0.795  # BPTT holds on PF14
    rows[-6 + 1]["iou_at_3N"] = 0.9  # RBP above C-RBP on PF25
    tests = ex.hypotheses(rows)
    assert [tests[h]["verdict"] for h in ("H1", "H2", "H3")] == ["not held"] * 3
    tests = ex.hypotheses([r for r in rows if r["model"] != "cnn_x4"])
    assert tests["H1"]["verdict"] == "not yet measured"


def test_gpu_setup_is_the_papers_scale():
    settings = ex.Settings(config_dir=str(ex.CONFIG_DIR / "extrapolation_gpu"))
    cfg = ex.run_config(settings, "crbp", 0)
    assert (cfg.DATA.TRAIN_LENGTH, cfg.DATA.CANVAS_SIZE, cfg.DATA.IMAGE_SIZE) == (14, 300, 150)
    assert (cfg.MODEL.CHANNELS, cfg.MODEL.RECURRENT.KERNEL_SIZE) == (25, 15)
    assert count_parameters(build_model(cfg)) == 284127
    assert count_parameters(build_model(ex.run_config(settings, "cnn", 0))) == 845527
    sizes = [ex.length_params(cfg, n) for n in (14, 20, 25)]
    assert [(p.canvas_size, s, p.num_distractors) for p, s in sizes] == [
        (300, 150, 15), (432, 216, 31), (536, 268, 48)
    ]  # fmt: skip


@pytest.mark.parametrize("steps", [3, 60])
def test_timecourse_figure_has_no_overlapping_panels(steps):
    """Every panel, colour bar and their titles lie apart and inside the figure (issue 17: the
    target was drawn over "after step 1" and the colour bar over the last panel)."""
    import numpy as np

    from crbp_d2.pathfinder.evaluation.plots import timecourse_figure

    rng = np.random.default_rng(0)
    course = {
        "probability": rng.random((steps, 32, 32)),
        "iou": [0.5] * steps,
        "onset": rng.integers(0, steps + 1, (32, 32)),
    }
    fig = timecourse_figure(rng.random((32, 32)), rng.random((32, 32)) > 0.5, course)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible() and ax.has_data()]
    boxes += [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(boxes) >= steps // 5 + 3
    figure = fig.bbox
    for i, a in enumerate(boxes):
        assert a.x0 >= figure.x0 - 1 and a.x1 <= figure.x1 + 1
        assert a.y0 >= figure.y0 - 1 and a.y1 <= figure.y1 + 1
        for b in boxes[i + 1 :]:
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 1 or overlap_y <= 1, (a, b)


def test_pilot_is_recorded_by_code(tmp_path):
    settings = ex.Settings(
        out_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "results"), smoke=True,
        test_lengths=(9,), test_size=4, shared_machine=True, overrides=("SOLVER.LR", "0.02"),
    )  # fmt: skip
    entry = ex.run_pilot(settings, "lr2e2", "crbp", note="a try", log=lambda _: None)
    again = ex.run_pilot(settings, "lr2e2", "crbp", note="again", log=lambda _: None)
    with open(tmp_path / "results" / f"{ex.PILOTS}.json") as f:
        entries = json.load(f)
    assert [e["note"] for e in entries] == ["again"]  # one entry per name
    score = entry["scores"]["PF9"]
    assert score["minus_marker_only"] == pytest.approx(score["iou_at_N"] - score["marker_only"])
    assert 0 < score["all_ink"] < 1
    assert entry["overrides"] == ["SOLVER.LR", "0.02"] and again["shared_machine"] is True
    text = (tmp_path / "results" / f"{ex.PILOTS}.md").read_text()
    assert "| lr2e2 | crbp | `SOLVER.LR` `0.02` | PF9 |" in text and "yes" in text
    best = f"| {score['iou_best']:.3f} ({score['best_step']}) |"
    assert best in text  # the best step of the read-out


def test_pilot_scores_a_checkpoint_on_its_own_test_sets(tmp_path):
    base = dict(
        out_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "results"), smoke=True,
        test_lengths=(9,), test_size=4,
    )  # fmt: skip
    clutter = ("DATA.GENERATOR.num_distractors", "8")
    trained = ex.run_pilot(ex.Settings(**base, overrides=clutter), "dense", "cnn", log=print)
    checkpoint = str(tmp_path / "out" / "pilots" / "dense" / "cnn_s0" / "last.pth")
    scorer = ex.Settings(**base, overrides=("TEST.BATCH_SIZE", "2"))  # no clutter override
    scored = ex.run_pilot(scorer, "rescored", "cnn", checkpoint=checkpoint, log=lambda _: None)
    # the checkpoint's test set (8 distractors) and baselines, not the settings' (3)
    for key in ("all_ink", "marker_only", "iou_at_N"):
        assert scored["scores"]["PF9"][key] == pytest.approx(trained["scores"]["PF9"][key])
    plain = ex.baseline_records(dataclasses.replace(scorer, overrides=()))
    ink = [r["iou"] for r in plain if r["model"] == "all_ink"][0]
    assert ink != pytest.approx(scored["scores"]["PF9"]["all_ink"])
    with pytest.raises(ValueError, match=r"only TEST\.\* overrides apply, not \['SOLVER.LR'\]"):
        ex.run_pilot(
            ex.Settings(**base, overrides=("SOLVER.LR", "0.1")), "x", "cnn", checkpoint=checkpoint
        )
    with pytest.raises(ValueError, match="bad TEST.* override.*TEST.NO_SUCH_KEY"):
        ex.scoring_overrides(ex.run_config(scorer, "cnn", 0), ("TEST.NO_SUCH_KEY", "1"))


def test_fingerprint_reads_only_the_changes_from_the_defaults(monkeypatch):
    """A key added to the defaults later (with a default that keeps the old behaviour) leaves
    finished runs valid; a changed setting does not."""
    settings = ex.Settings()
    cfg = ex.run_config(settings, "crbp", 0)
    before = ex.fingerprint(settings, cfg)
    real_defaults = ex.get_default_config

    def defaults_with_a_new_switch():
        defaults = real_defaults()
        defaults.MODEL.RECURRENT.NEW_SWITCH = False
        return defaults

    monkeypatch.setattr(ex, "get_default_config", defaults_with_a_new_switch)
    cfg.defrost()
    cfg.MODEL.RECURRENT.NEW_SWITCH = False
    assert ex.fingerprint(settings, cfg) == before
    cfg.MODEL.RECURRENT.NEW_SWITCH = True
    assert ex.fingerprint(settings, cfg) != before
    cfg.MODEL.RECURRENT.NEW_SWITCH = False
    cfg.MODEL.RECURRENT.TIMESTEPS += 1
    assert ex.fingerprint(settings, cfg) != before


def test_recorded_runs_stay_finished_after_the_cell_keys_moved():
    """The cell's keys moved into MODEL.RECURRENT (MODEL.ARCH -> MODEL.RECURRENT.CELL, ...) after
    runs were recorded: every recorded run still counts as finished (its fingerprint reads the
    moved keys under their old names), and a moved key's change still changes the fingerprint."""
    settings = ex.Settings()
    records = sorted(
        name[: -len(".json")]
        for name in os.listdir(settings.runs_dir)
        if name.endswith(".json") and "_s" in name
    )
    assert records, f"no recorded runs in {settings.runs_dir}"
    for name in records:
        with open(os.path.join(settings.runs_dir, f"{name}.json")) as f:
            stored = json.load(f)
        model, seed = name.rsplit("_s", 1)
        run_settings = dataclasses.replace(settings, overrides=tuple(stored.get("overrides", ())))
        assert ex.finished(run_settings, model, int(seed)), name
    cfg = ex.run_config(settings, "cnn", 0)
    assert cfg.MODEL.RECURRENT.CELL == "cnn"
    assert ("MODEL.ARCH", "'cnn'") in ex.config_changes(cfg)
    before = ex.fingerprint(settings, cfg)
    cfg.defrost()
    cfg.MODEL.RECURRENT.KERNEL_SIZE += 2
    assert ex.fingerprint(settings, cfg) != before


@pytest.mark.parametrize("model", [m.key for m in ex.MODELS])
def test_dense_recipe_is_the_protocol_with_more_clutter_and_training(model):
    sparse = ex.flat_config(_cfg(model))
    dense = ex.flat_config(_cfg(model, config_dir=str(ex.CONFIG_DIR / "extrapolation_dense")))
    changed = {k for k in sparse if sparse[k] != dense[k] and k != "OUTPUT_DIR"}
    assert changed == {"SOLVER.EPOCHS", "DATA.GENERATOR.num_distractors", "TEST.BATCH_SIZE"}
    assert (sparse["SOLVER.EPOCHS"], dense["SOLVER.EPOCHS"]) == (6, 12)
    assert (sparse["DATA.GENERATOR.num_distractors"], dense["DATA.GENERATOR.num_distractors"]) == (
        3,
        10,
    )


def test_report_names_each_recipe():
    dense = ex.Settings(config_dir=str(ex.CONFIG_DIR / "extrapolation_dense"))
    assert ex.training_recipe(_cfg()) == (
        "PF9 (128 px -> 64 px), 3,000 images with 3 distractors, 900 Adam steps of batch 8 "
        "(lr 0.01, cosine)"
    )
    assert "10 distractors, 1,800 Adam steps" in ex.training_recipe(ex.run_config(dense, "crbp", 0))
    # the longer test sets keep the recipe's density: 10 per 128-px canvas, by area
    params, _ = ex.length_params(ex.run_config(dense, "crbp", 0), 14)
    assert params.num_distractors == round(10 * (params.canvas_size / 128) ** 2)


def test_cli_dense_option(capsys):
    from crbp_d2.cli import pathfinder_extrapolation as cli

    args = cli.parse_args(["--dense"])
    assert args.configs.endswith(os.path.join("pathfinder", "extrapolation_dense"))
    assert args.stem == ex.DENSE_STEM
    assert args.out_dir == os.path.join(ex.REPO_ROOT, "output", "pathfinder", "extrapolation_dense")
    plain = cli.parse_args([])
    assert plain.out_dir == os.path.join(ex.REPO_ROOT, "output", "pathfinder", "extrapolation")
    with pytest.raises(SystemExit):
        cli.parse_args(["--gpu", "--dense"])
    assert "choose one" in capsys.readouterr().err


def test_test_batch_is_part_of_the_input_of_a_batch_statistics_cell(tmp_path):
    """The hGRU's BN uses batch statistics at test time too, so the test batch changes the
    logits: the dense recipe fixes it in its config (TEST.BATCH_SIZE), hence in the fingerprint."""
    settings = ex.Settings(out_dir=str(tmp_path), smoke=True)
    cfg = ex.run_config(settings, "crbp", 0)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    dataset = ex.build_test_set(cfg, 9, 4, settings.cache_dir)
    images = torch.stack([dataset[i][0] for i in range(4)])
    with torch.no_grad():
        together = model.logits_at_steps(images, [3])[3]
        alone = torch.cat([model.logits_at_steps(images[i : i + 1], [3])[3] for i in range(4)])
    assert not torch.allclose(together, alone, atol=1e-3)
    dense = ex.Settings(config_dir=str(ex.CONFIG_DIR / "extrapolation_dense"))
    cfg = ex.run_config(dense, "crbp", 0)
    assert cfg.TEST.BATCH_SIZE == cfg.SOLVER.BATCH_SIZE == 8
    other = dataclasses.replace(dense, overrides=("TEST.BATCH_SIZE", "64"))
    assert ex.fingerprint(dense, cfg) != ex.fingerprint(other, ex.run_config(other, "crbp", 0))


def test_verdicts_over_different_seeds_are_marked_provisional(tmp_path):
    def records(model, seed, recurrent):
        base = dict(model=model, label=model, test_length=9, seed=seed, params=1)
        if not recurrent:
            return [dict(base, recurrent=False, train_steps=None, steps=6, iou=0.5)]
        return [
            dict(base, recurrent=True, train_steps=2, steps=t, iou=0.1 * t) for t in range(1, 7)
        ]

    settings = ex.Settings(out_dir=str(tmp_path), results_dir=str(tmp_path), smoke=True)
    both = records("crbp", 0, True) + records("crbp", 1, True) + records("cnn", 0, False)
    for recs, provisional in ((both, True), (both[:6] + both[12:], False)):
        rows = ex.summary_rows(recs)
        text = ex.markdown_report(rows, ex.hypotheses(rows), [], settings)
        assert ("**Provisional**: the models have different seeds" in text) is provisional
        if provisional:
            assert "recorded so far (0; 0,1)" in text
