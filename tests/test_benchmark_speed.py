"""The speed benchmark's report (crbp_d2.benchmarks.speed): the factors in its table and its
input errors; its measurements run in tests/test_cuda_check.py (core_step, smoke)."""

import json

import pytest

from crbp_d2.benchmarks import speed


def _record(measure, variant, seconds, **extra):
    return {
        "measure": measure,
        "variant": variant,
        "seconds": seconds,
        "settings": {"steps": 20},
        "shared_machine": True,
        "machine": {"device": "test cpu", "torch": "x"},
        **extra,
    }


def test_table_gives_the_factors_against_crbp20_and_the_baseline():
    records = [
        _record("pathfinder_step", "bptt6", 1.0, forward_evaluations=6),
        _record("pathfinder_step", "crbp20", 2.5, forward_evaluations=20, neumann_terms=15),
        _record(
            "pathfinder_step",
            "crbp20-fast",
            2.0,
            forward_evaluations=8,
            neumann_terms=9,
            forward_seconds=0.5,
            backward_seconds=1.5,
        ),
        _record("rfpn_step", "bptt5", 4.0),
        _record("rfpn_step", "crbp20", 8.0),
    ]
    text = speed.table(records)
    assert (
        "| pathfinder_step | crbp20-fast | 2.000 | 0.80 | 2.00 | 8 | 9 | 0.500 | 1.500 |  |" in text
    )
    assert "| rfpn_step | crbp20 | 8.000 | 1.00 | 2.00 | 20 |  |  |  |  |" in text
    assert "Shared machine" in text and "test cpu" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--measures", "gpu_step"], "unknown measure 'gpu_step'"),
        (["--pathfinder-variants", "crbp99"], "unknown pathfinder_step variant 'crbp99'"),
    ],
)
def test_bad_arguments_are_one_clear_error(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        speed.main(argv + ["--out", str(tmp_path / "x")])
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_protocol_jobs_become_pathfinder_job_records(tmp_path):
    """``--add-protocol``: each protocol job's wall time and its IoU at N and 3N, the machine and
    the shared flag it recorded (or the one given), in the table beside the BPTT job."""
    from crbp_d2.benchmarks.speed import protocol_job_records, table

    evaluations = [
        {"method": "crbp_fast", "train_steps": 20, "eval_steps": 20, "iou": 0.49},
        {"method": "crbp_fast", "train_steps": 20, "eval_steps": 60, "iou": 0.48},
        {"method": "bptt", "train_steps": 6, "eval_steps": 6, "iou": 0.50},
        {"method": "bptt", "train_steps": 6, "eval_steps": 18, "iou": 0.44},
        {"method": "marker_only", "train_steps": None, "eval_steps": None, "iou": 0.38},
    ]
    summary = {"job_seconds": {"crbp_fast": 300.0, "bptt": 200.0}, "machine": {"device": "cpu"}}
    (tmp_path / "run.json").write_text(json.dumps(evaluations))
    (tmp_path / "run_summary.json").write_text(json.dumps(summary))
    records = protocol_job_records(tmp_path, "run", shared=True)
    by_variant = {r["variant"]: r for r in records}
    assert set(by_variant) == {"crbp20-fast", "bptt6"}
    fast = by_variant["crbp20-fast"]
    assert (fast["seconds"], fast["iou_n"], fast["iou_3n"]) == (300.0, 0.49, 0.48)
    assert by_variant["bptt6"]["iou_3n"] == 0.44
    assert all(r["shared_machine"] and r["measure"] == "pathfinder_job" for r in records)
    assert "| pathfinder_job | crbp20-fast [run] | 300* | 1.50 | 0.490 | 0.480 |" in table(records)
    # a second protocol run (another pair): its jobs keep to their own BPTT job
    summary["job_seconds"] = {"crbp_fast": 500.0, "bptt": 400.0}
    (tmp_path / "run2.json").write_text(json.dumps(evaluations))
    (tmp_path / "run2_summary.json").write_text(json.dumps(summary))
    both = records + protocol_job_records(tmp_path, "run2", shared=True)
    text = table(both)
    assert "| pathfinder_job | crbp20-fast [run] | 300* | 1.50 |" in text
    assert "| pathfinder_job | crbp20-fast [run2] | 500* | 1.25 |" in text
    # --add-protocol replaces the records of its own run only
    from crbp_d2.benchmarks.speed import main

    (tmp_path / "speed.json").write_text(json.dumps(both))
    assert main(["--out", str(tmp_path / "speed"), "--add-protocol", "run2"]) == 0
    kept = json.loads((tmp_path / "speed.json").read_text())
    assert sorted((r["variant"], r["seconds"]) for r in kept) == [
        ("bptt6", 200.0), ("bptt6", 400.0), ("crbp20-fast", 300.0), ("crbp20-fast", 500.0),
    ]  # fmt: skip


def test_rfpn_protocol_rerun_becomes_rfpn_protocol_records_beside_the_recorded_row(tmp_path):
    """``--add-rfpn-protocol``: the recorded C-RBP row (per seed, its own shared flag) and the
    re-run's training job seconds, GT-box IoU at N and 3N (fractions), engine settings from its
    config and the mean evaluations and terms its training logged; per seed against the row."""
    import yaml

    from crbp_d2.benchmarks.speed import rfpn_protocol_records, table

    def rows(seed, minutes, ious, head="crbp"):
        return [
            {"dataset": "contours", "head": head, "seed": seed, "train_steps": 2,
             "eval_steps": k + 1, "gt_box_iou": iou, "train_minutes": minutes,
             "seconds_per_iter": 0.3, "provenance": {"device": "cpu", "shared_machine": None}}
            for k, iou in enumerate(ious)
        ]  # fmt: skip

    baseline = tmp_path / "protocol.json"
    recorded = rows(0, 10.0, [50, 60, 61, 62, 63, 64]) + rows(0, 5.0, [1, 2], head="bptt")
    baseline.write_text(json.dumps(recorded))
    run = tmp_path / "runs" / "contours" / "crbp" / "seed0"
    run.mkdir(parents=True)
    (run / "record.json").write_text(json.dumps(rows(0, 15.0, [40, 55, 58, 59, 60, 62.5])))
    engine = {"FORWARD_SOLVER": "anderson", "NEUMANN_TOL": 0.01, "TIMESTEPS": 2, "GALA": True}
    config = {"MODEL": {"ROI_MASK_HEAD": {"RECURRENT": engine}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = [{"crbp/neumann_terms": 5.0, "crbp/forward_evaluations": 2.0, "iteration": 19},
               {"crbp/neumann_terms": 3.0, "crbp/forward_evaluations": 2.0, "iteration": 39},
               {"gt_box/mIoU": 60.0, "iteration": 40}]  # fmt: skip
    (run / "metrics.json").write_text("\n".join(json.dumps(m) for m in metrics))
    records = rfpn_protocol_records(tmp_path / "runs", "crbp2-fast", baseline, "crbp2")
    old, new = records
    assert (old["variant"], old["seconds"], old["iou_n"], old["iou_3n"]) == (
        "crbp2", 600.0, 0.60, 0.64,
    )  # fmt: skip
    assert old["shared_machine"] is None and new["shared_machine"] is True
    assert (new["seconds"], new["iou_n"], new["iou_3n"]) == (900.0, 0.55, 0.625)
    assert new["settings"] == {
        "dataset": "contours", "head": "crbp", "steps": 2, "FORWARD_SOLVER": "anderson",
        "NEUMANN_TOL": 0.01, "TIMESTEPS": 2, "mean_neumann_terms": 4.0,
        "mean_forward_evaluations": 2.0,
    }  # fmt: skip
    assert all(r["measure"] == "rfpn_protocol" and r["seed"] == 0 for r in records)
    assert "| rfpn_protocol | crbp2-fast (seed 0) | 900* | 1.50 | 0.550 | 0.625 |" in table(records)
    # a baseline from another machine (or one that did not record it): no ratio
    for device in ("another cpu", None):
        old["machine"] = dict(old["machine"], device=device)
        assert "| crbp2-fast (seed 0) | 900* | other machine | 0.550 |" in table(records)
    with pytest.raises(FileNotFoundError, match="no run under"):
        rfpn_protocol_records(tmp_path / "elsewhere", "x", baseline, "crbp2")
    stopped = run.parent / "seed1"  # stopped before the end: its iterations and logged means
    stopped.mkdir()
    config["SEED"], config["SOLVER"] = 1, {"MAX_ITER": 1750}
    config["MODEL"]["ROI_MASK_HEAD"]["RECURRENT"].update(TIMESTEPS=6, NEUMANN_STEPS=5)
    (stopped / "config.yaml").write_text(yaml.safe_dump(config))
    (stopped / "metrics.json").write_text("\n".join(json.dumps(m) for m in metrics[:2]))
    records = rfpn_protocol_records(tmp_path / "runs", "crbp2-fast", baseline, "crbp2")
    unfinished = records[-1]
    assert unfinished["finished"] is False and unfinished["seconds"] is None
    assert (unfinished["seed"], unfinished["iterations_done"]) == (1, 40)
    assert unfinished["settings"]["mean_neumann_terms"] == 4.0
    assert (
        "| rfpn_protocol | crbp2-fast (seed 1) | unfinished: 40 of 1750 iterations (mean "
        "evaluations 2.0 of 6, terms 4.0 of 5) |" in table(records)
    )


def test_levers_table_keeps_a_lever_only_where_it_wins_everywhere():
    """channels_last and AUTOCAST_BF16 against float32: the in-turn factors of the cell step and
    of the C-RBP-20 step, the training-step pair, and the verdict."""
    from crbp_d2.benchmarks.speed import levers_text

    records = [
        _record("cell_step", "mask_head-bf16", 0.3, vs_fp32=0.4),
        _record("layout_step", "mask_head-autocast_bf16", 2.0, vs_fp32=0.6,
                grad_relative_error=2e-3),
        _record("rfpn_step", "crbp20", 10.0),
        _record("rfpn_step", "crbp20-bf16", 8.0),
        _record("cell_step", "pathfinder-channels_last", 0.3, vs_fp32=0.9),
        _record("layout_step", "pathfinder-channels_last", 2.0, vs_fp32=1.1),
    ]  # fmt: skip
    text = levers_text(records)
    assert (
        "| AUTOCAST_BF16 | mask_head | 0.40x | 0.60x | 0.80x (rfpn_step) | 2.0e-03 | wins |" in text
    )
    assert (
        "| channels_last | pathfinder | 0.90x | 1.10x | - (pathfinder_step) |  | does not" in text
    )
    assert "| AUTOCAST_BF16 | pathfinder |" not in text  # not measured: no row
    assert levers_text([_record("rfpn_step", "crbp20", 1.0)]) == ""


def test_neumann_profile_text_says_whether_the_tolerance_fires_within_k():
    from crbp_d2.benchmarks.speed import neumann_profile_text

    slow = [0.9**k for k in range(41)]  # 0.9^15 = 0.206: tol 1e-2 never fires within 15
    record = _record("neumann_profile", "trained", 5.0, term_ratios=slow, tol=1e-2,
                     terms_to_tol=None, tail_contraction=0.9, backward_seconds_k15=5.0,
                     backward_seconds_k1=3.6)  # fmt: skip
    text = neumann_profile_text([record])
    assert "| trained | 0.9 | 0.81 | 0.656 | 0.531 | 0.43 | 0.206 | > 40 | 0.900 | 5.000 |" in text
    assert "term is 0.206 of ||g0||, so the test (term <= tol x ||g0||) never fires" in text
    assert "Each term costs about 0.100 s" in text
    fast = dict(record, term_ratios=[0.5**k for k in range(41)], terms_to_tol=7)
    assert "fires within K = 15" in neumann_profile_text([fast])
    assert "| 7 (tol 0.01) |" in neumann_profile_text([fast])
