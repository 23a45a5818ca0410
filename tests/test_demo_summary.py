"""make demo's summary and its timing record, from a hand-built demo folder."""

import csv
import json

import pytest

from crbp_d2.cli import demo_summary


@pytest.fixture
def demo_folder(tmp_path):
    out = tmp_path / "demo"
    (out / "pathfinder" / "run").mkdir(parents=True)
    (out / "rfpn" / "eval").mkdir(parents=True)
    (out / "rfpn" / "sweep").mkdir(parents=True)
    (out / "logs").mkdir()
    memory = [
        {"method": m, "steps": n, "saved_bytes": b * 2**20}
        for m, per_step in (("bptt", (10, 20)), ("crbp", (5, 5)))
        for n, b in zip((5, 10), per_step)
    ]
    (out / "memory.json").write_text(json.dumps(memory))
    (out / "pathfinder" / "run" / "eval_only.json").write_text(
        json.dumps({"results": {"6": {"iou": 0.5}, "30": {"iou": 0.45}}})
    )
    steps = [{"model": "crbp", "method": "crbp", "train_steps": 6, "steps": s, "iou": s / 100}
             for s in (1, 6, 30)]  # fmt: skip
    steps.append({"model": "flood_fill", "method": "baseline", "iou": 0.6})
    (out / "pathfinder" / "steps.json").write_text(json.dumps(steps))
    final = {"panoptic_seg/PQ": 60.0, "panoptic_seg/PQ_th": 45.25, "panoptic_seg/PQ_st": 70.0,
             "segm/AP": 33.0, "bbox/AP": 40.0, "gt_box/mIoU": 80.5}  # fmt: skip
    (out / "rfpn" / "eval" / "metrics.json").write_text(
        json.dumps({"iteration": 1}) + "\n" + json.dumps(final) + "\n"
    )
    with open(out / "rfpn" / "sweep" / "timestep_sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["steps", "PQ_th"])
        writer.writeheader()
        writer.writerows([{"steps": 1, "PQ_th": 30.0}, {"steps": 12, "PQ_th": 44.0}])
    (out / "logs" / "seconds.txt").write_text("memory 12 s\npf_train 100 s\nrfpn_train 200 s\n")
    return out


def test_summary_reads_every_step(demo_folder):
    text = demo_summary.summary(str(demo_folder))
    assert "bptt 10 / 20, crbp 5 / 5" in text
    assert "0.060 at N = 6, 0.300 at 30; flood_fill 0.600" in text
    assert "PQ things 45.2" in text and "mask IoU on GT boxes 80.5" in text
    assert "PQ things vs test steps: 30.0 at 1, 44.0 at 12" in text


def test_results_record_the_step_timings(demo_folder, tmp_path):
    stem = tmp_path / "results" / "demo"
    assert demo_summary.main([str(demo_folder), "--results", str(stem)]) == 0
    record = json.loads((tmp_path / "results" / "demo.json").read_text())[0]
    assert record["total_seconds"] == 312
    assert [r["step"] for r in record["steps"]] == ["memory", "pf_train", "rfpn_train"]
    table = (tmp_path / "results" / "demo.md").read_text()
    assert "| rfpn_train | 200 |" in table and "5.2 min" in table


def test_the_total_is_the_wall_time_when_make_demo_recorded_it(demo_folder, tmp_path):
    """make demo runs two lanes after the R-FPN training: the steps add up to more than the wall
    time, which it records as 'wall N s'."""
    with open(demo_folder / "logs" / "seconds.txt", "a") as f:
        f.write("wall 250 s\n")
    stem = tmp_path / "demo"
    assert demo_summary.main([str(demo_folder), "--results", str(stem)]) == 0
    record = json.loads((tmp_path / "demo.json").read_text())[0]
    assert record["total_seconds"] == 250 and record["total_is"] == "wall"
    assert [r["step"] for r in record["steps"]] == ["memory", "pf_train", "rfpn_train"]
    table = (tmp_path / "demo.md").read_text()
    assert "| **wall time** | **250** |" in table and "4.2 min" in table


def test_missing_or_malformed_timings_are_one_line(demo_folder, tmp_path, capsys):
    (demo_folder / "logs" / "seconds.txt").write_text("memory twelve s\n")
    with pytest.raises(SystemExit) as exit_info:
        demo_summary.main([str(demo_folder), "--results", str(tmp_path / "demo")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seconds.txt:1" in err[0]
    assert not (tmp_path / "demo.json").exists()


def test_results_keep_the_metrics_as_fields_and_the_provenance(demo_folder, tmp_path):
    stem = tmp_path / "results" / "demo"
    assert demo_summary.main([str(demo_folder), "--results", str(stem)]) == 0
    record = json.loads((tmp_path / "results" / "demo.json").read_text())[0]
    metrics = record["metrics"]
    assert metrics["memory"]["saved_mib"] == {"bptt": {"5": 10.0, "10": 20.0},
                                              "crbp": {"5": 5.0, "10": 5.0}}  # fmt: skip
    assert metrics["pathfinder"]["test_iou"] == {"6": {"iou": 0.5}, "30": {"iou": 0.45}}
    assert metrics["pathfinder"]["baselines"] == {"flood_fill": 0.6}
    assert metrics["rfpn"]["panoptic_seg/PQ_th"] == 45.25
    assert metrics["rfpn"]["pq_things_vs_steps"] == {"1": 30.0, "12": 44.0}
    assert {"device", "torch", "threads", "git_commit", "shared_machine"} <= set(record["machine"])
    # the summary's text gives the same numbers back (at its rounding)
    parsed = demo_summary.parse_summary(record["summary"])
    assert parsed["pathfinder"]["iou_vs_steps"] == {"6": 0.06, "30": 0.3}
    assert parsed["rfpn"]["panoptic_seg/PQ_th"] == 45.2 and parsed["rfpn"]["gt_box/mIoU"] == 80.5
    assert demo_summary.demo_markdown([record]) == (tmp_path / "results" / "demo.md").read_text()
