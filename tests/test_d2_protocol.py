"""The R-FPN CPU protocol's runner and report (the protocol itself is a benchmark, not a test)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

from crbp_d2.rfpn.experiments.cpu_protocol import (  # noqa: E402
    ProtocolRun,
    protocol_runs,
    protocol_table,
    run_protocol,
)

from crbp_d2.cli import rfpn_cpu_protocol  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "quick" / "R-FPN-R50-CRBP-synthetic-test.yaml")


def test_runs_cover_every_combination_slowest_first_and_select_their_head():
    runs = protocol_runs(["contours", "shapes"], ["fpn", "bptt", "rbp", "crbp"], [0, 1], steps=6)
    assert len(runs) == 16 and runs[0].head == "crbp" and runs[-1].head == "fpn"
    crbp = ProtocolRun("contours", "crbp", 0, 6)
    opts = dict(zip(crbp.head_opts()[::2], crbp.head_opts()[1::2]))
    assert opts["MODEL.ROI_MASK_HEAD.RECURRENT.TIMESTEPS"] == "6"
    assert "MODEL.ROI_MASK_HEAD.RECURRENT.LCP_WEIGHT" not in opts
    rbp = dict(zip(*[iter(ProtocolRun("shapes", "rbp", 1, 6).head_opts())] * 2))
    assert rbp["MODEL.ROI_MASK_HEAD.RECURRENT.LCP_WEIGHT"] == "0.0"
    assert ProtocolRun("shapes", "bptt", 0, 6).train_steps == 3
    with pytest.raises(ValueError, match=r"unknown head\(s\) \['lstm'\]"):
        protocol_runs(["shapes"], ["lstm"], [0], 6)
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['coco'\]"):
        protocol_runs(["coco"], ["fpn"], [0], 6)


def _record(head, seed, steps, iou, n=2):
    return {
        "dataset": "shapes", "head": head, "seed": seed, "train_steps": n, "eval_steps": steps,
        "gt_box_iou": iou, "gt_box_bf": 0.0, "mask_ap": 10.0 + seed, "pq_things": 5.0,
        "pq": 40.0, "head_params": 1234, "seconds_per_iter": 0.5, "peak_rss_mib": 100.0,
    }  # fmt: skip


def test_table_reports_mean_and_spread_over_seeds_and_the_change_at_3n():
    records = [_record("fpn", s, None, 50.0 + s, n=0) for s in (0, 1)]
    for seed, (at_n, at_3n) in enumerate(((60.0, 58.0), (64.0, 63.0))):
        records += [_record("crbp", seed, 2, at_n), _record("crbp", seed, 6, at_3n)]
    table = protocol_table(records).splitlines()
    fpn = next(line for line in table if "FPN (4-conv head)" in line)
    crbp = next(line for line in table if "C-RBP-2" in line)
    assert "| 50.5 ± 0.5 | - | - | 10.5 ± 0.5 |" in fpn
    # at N: 62 ± 2; at 3N: 60.5 ± 2.5; per-seed change -2 and -1: -1.5 ± 0.5
    assert "| 62.0 ± 2.0 | 60.5 ± 2.5 | -1.5 ± 0.5 |" in crbp and "| 1,234 |" in crbp
    assert crbp.endswith("| 100 | 2 |")
    # a training kept from an interrupted run has no peak RSS: the mean of the others, marked
    for r in records:
        if r["head"] == "crbp" and r["seed"] == 1:
            r["peak_rss_mib"] = None
    crbp = next(line for line in protocol_table(records).splitlines() if "C-RBP-2" in line)
    assert crbp.endswith("| 100* | 2 |")
    for r in records:
        r["peak_rss_mib"] = None
    crbp = next(line for line in protocol_table(records).splitlines() if "C-RBP-2" in line)
    assert crbp.endswith("| n/a | 2 |")


def test_contended_timings_are_kept_out_of_the_mean():
    def run(seed, seconds, **more):
        return {**_record("crbp", seed, 2, 60.0), "seconds_per_iter": seconds, **more}

    def timing(records):
        crbp = next(line for line in protocol_table(records).splitlines() if "C-RBP-2" in line)
        return crbp.split(" | ")[-3]

    # two runs alone that agree: their mean and half-range
    assert timing([run(0, 0.30), run(1, 0.32)]) == "0.31 ± 0.01"
    # a run flagged as on a shared machine: left out of the mean, shown apart
    assert timing([run(0, 0.30), run(1, 0.60, shared_machine=True)]) == "0.30 ± 0.00 (0.60*)"
    # unflagged runs 2x apart (records from before the flag): each shown, no mean
    assert timing([run(0, 0.60), run(1, 0.30)]) == "0.60 / 0.30 (differ: contended?)"


def test_protocol_runs_end_to_end_and_reuses_finished_runs(tmp_path, capsys):
    out, stem = tmp_path / "runs", str(tmp_path / "results")
    runs = protocol_runs(["shapes"], ["fpn", "bptt"], [0], steps=2)
    records = run_protocol(runs, str(out), stem, configs={"shapes": TINY}, progress=False)
    fields = {"dataset", "head", "seed", "train_steps", "eval_steps", "gt_box_iou", "mask_ap"}
    assert all(fields <= set(r) for r in records)
    bptt = [r for r in records if r["head"] == "bptt"]
    assert [r["eval_steps"] for r in bptt] == list(range(1, 10))  # 1..3N for BPTT-3
    fpn = [r for r in records if r["head"] == "fpn"]
    assert len(fpn) == 1 and fpn[0]["eval_steps"] is None
    assert fpn[0]["head_params"] > bptt[0]["head_params"] > 0
    assert json.loads(Path(stem + ".json").read_text()) == json.loads(json.dumps(records))
    assert (
        Path(stem + ".png").stat().st_size > 10_000
        and "R-FPN BPTT-3" in Path(stem + ".md").read_text()
    )
    finished = out / "shapes" / "fpn" / "seed0" / "record.json"
    stamp = finished.stat().st_mtime_ns
    again = run_protocol(runs, str(out), None, configs={"shapes": TINY}, progress=False)
    assert again == records and finished.stat().st_mtime_ns == stamp
    # a training that finished but whose evaluation did not: only the evaluation runs again
    folder = out / "shapes" / "bptt" / "seed0"
    weights = (folder / "model_final.pth").stat().st_mtime_ns
    (folder / "record.json").unlink()
    again = run_protocol(runs, str(out), None, configs={"shapes": TINY}, progress=False)
    assert (folder / "model_final.pth").stat().st_mtime_ns == weights

    def steady(rs):  # the machine's load is measured again with the evaluation
        return [{k: v for k, v in r.items() if k not in ("load_average_1min", "shared_machine")}
                for r in rs]  # fmt: skip

    assert steady(again) == steady(records)
    # bad input: one line, exit status 2
    with pytest.raises(SystemExit) as exit_info:
        rfpn_cpu_protocol.main(["--config", "shapes=/nowhere.yaml", "--out-dir", str(out)])
    assert exit_info.value.code == 2
    assert "rfpn_cpu_protocol.py: error: --config 'shapes=/nowhere.yaml': no such file" in (
        capsys.readouterr().err
    )
