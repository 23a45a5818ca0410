"""The methods benchmark on tiny models (the benchmark itself runs at full size, not here)."""

import json

import pytest

from crbp_d2.benchmarks import methods
from crbp_d2.benchmarks.methods import MethodsBenchmark, run_methods_benchmark

TINY = MethodsBenchmark(size=12, channels=3, kernel=3, rois=3, width=8, neumann_steps=60)


def test_records_fidelity_and_costs_of_each_variant(tmp_path):
    variants = ["bptt", "rbp", "crbp-tol", "jfb", "crbp-anderson"]
    records = run_methods_benchmark(TINY, ["pathfinder"], variants, [2, 40], progress=False)
    assert [(r["variant"], r["steps"]) for r in records] == [
        (v, n) for v in variants for n in (2, 40)
    ]
    by = {(r["variant"], r["steps"]): r for r in records}
    for record in records:
        assert record["saved_bytes"] > 0
        # ||g - r|| / ||r|| >= sin(angle) for any g, r: the two numbers describe one pair
        cosine, error = record["grad_cosine"], record["grad_relative_error"]
        assert error >= (1 - min(cosine, 1.0) ** 2) ** 0.5 - 1e-6, record["variant"]
    # RBP with many terms and BPTT through 40 steps, from a nearly converged state, are the exact
    # implicit gradient (measured: cosine 1 - 1e-14 for both) ...
    assert by["rbp", 40]["grad_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert by["bptt", 40]["grad_cosine"] == pytest.approx(1.0, abs=1e-6)
    # ... jfb is not (measured 0.969), and no method is exact after 2 steps (measured 0.77-0.86)
    assert by["jfb", 40]["grad_cosine"] < 0.99
    assert all(by[v, 2]["grad_cosine"] < 0.95 for v in variants)
    # ... and stopping the series at 1e-3 of g0 keeps it, with fewer terms than K
    assert by["crbp-tol", 40]["cosine_vs_full_series"] > 0.999
    assert by["crbp-tol", 40]["neumann_terms"] < by["crbp-tol", 40]["neumann_terms_max"]
    assert by["crbp-tol", 40]["neumann_terms_max"] == 4 * TINY.neumann_steps
    for record in records:  # provenance of every record
        assert {"device", "torch", "threads", "git_commit", "shared_machine"} <= set(record)
        assert record["saved_counter"] == "distinct_storage"
    # memory: BPTT grows with the steps, the one-step methods do not
    assert by["bptt", 40]["saved_bytes"] > 10 * by["bptt", 2]["saved_bytes"]
    assert by["jfb", 40]["saved_bytes"] == by["jfb", 2]["saved_bytes"]
    assert by["crbp-anderson", 40]["forward_evaluations"] < 40
    paths = methods.write_methods_results(records, str(tmp_path / "methods"))
    assert json.loads(open(paths["json"]).read())[0]["model"] == "pathfinder"
    assert "| pathfinder | crbp-tol | 40 |" in open(paths["md"]).read()


def test_a_configuration_too_big_for_memory_is_recorded_not_run(monkeypatch):
    monkeypatch.setattr(methods, "_total_memory", lambda: 10 * 2**20)  # 10 MiB of RAM
    records = run_methods_benchmark(TINY, ["pathfinder"], ["bptt"], [2, 400], progress=False)
    assert "seconds" in records[0] and "error" not in records[0]
    assert records[1]["error"].startswith("not run: would save")
    with pytest.raises(ValueError, match="unknown model"):
        run_methods_benchmark(TINY, ["coco"], ["bptt"], [2])


def test_shared_machine_flag_marks_every_record_and_the_table(tmp_path, monkeypatch):
    from crbp_d2.cli import benchmark_methods

    monkeypatch.setenv("CRBP_SHARED_MACHINE", "0")  # the flag overrides an idle verdict
    stem = tmp_path / "methods"
    argv = ["--models", "pathfinder", "--variants", "jfb", "--steps", "2", "--size", "12"]
    argv += ["--channels", "3", "--kernel", "3", "--neumann-steps", "5", "--no-progress"]
    assert benchmark_methods.main(argv + ["--shared-machine", "--out", str(stem)]) == 0
    records = json.loads((tmp_path / "methods.json").read_text())
    assert [r["shared_machine"] for r in records] == [True]
    text = (tmp_path / "methods.md").read_text()
    assert "| jfb | 2 |" in text and text.split("| jfb | 2 |")[1].split("|")[0].endswith("* ")
    assert "not clean timings" in text
