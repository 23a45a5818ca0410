"""Every number the README shows comes from a record written by code, with its provenance
(crbp_d2.utils.records.check_results), and the check catches each way it can go wrong."""

import json
import os
import shutil

import pytest

from crbp_d2.cli import update_readme
from crbp_d2.utils.bench import SAVED_COUNTER
from crbp_d2.utils.records import check_results, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(ROOT, "docs", "results")


def test_the_readme_agrees_with_its_records():
    assert check_results(README, RESULTS) == []
    assert update_readme.main(["--readme", README, "--results", RESULTS, "--check"]) == 0


@pytest.fixture
def copy(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in os.listdir(RESULTS):
        if name.endswith((".json", ".md")):
            shutil.copy(os.path.join(RESULTS, name), results / name)
    shutil.copy(README, tmp_path / "README.md")
    return tmp_path


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_block_that_differs_from_its_table_is_caught(copy):
    _edit(
        copy / "README.md",
        "<!-- results:memory_cpu -->\n| method",
        "<!-- results:memory_cpu -->\n| Method",
    )
    assert check_results(copy / "README.md", copy / "results") == [
        "memory_cpu: the README block differs from memory_cpu.md"
    ]


def test_a_table_that_is_not_what_its_records_give_is_caught(copy):
    records = json.loads((copy / "results" / "memory_cpu.json").read_text())
    records[0]["saved_bytes"] += 2**20  # the table and the README block still show the old value
    (copy / "results" / "memory_cpu.json").write_text(json.dumps(records))
    assert check_results(copy / "README.md", copy / "results") == [
        "memory_cpu: memory_cpu.md is not what its code renders from the JSON"
    ]


def test_a_record_without_provenance_or_with_an_absolute_path_is_caught(copy):
    records = json.loads((copy / "results" / "memory_cpu.json").read_text())
    del records[3]["git_commit"]
    records[4]["note"] = "ran from /work/main/output/x"
    (copy / "results" / "memory_cpu.json").write_text(json.dumps(records))
    problems = check_results(copy / "README.md", copy / "results")
    assert "memory_cpu.json record 3: no git_commit" in problems
    assert any(p.startswith("memory_cpu.json: absolute path(s)") for p in problems)


def test_a_tracked_number_outside_the_blocks_is_caught(copy):
    _edit(copy / "README.md", "while C-RBP's stays at 3.2 GiB", "while C-RBP's stays at 3.3 GiB")
    assert check_results(copy / "README.md", copy / "results") == [
        "H200 hGRU core: C-RBP peak (GiB): the README says '3.3', memory_cuda.json '3.2'"
    ]
    _edit(copy / "README.md", "stays at 3.3 GiB", "stays at 3.3 GB")
    assert check_results(copy / "README.md", copy / "results") == [
        "tracked number not found in the README: H200 hGRU core: C-RBP peak (GiB)"
    ]


@pytest.mark.parametrize(
    "name, old_column, new_column",
    [
        ("memory_cuda", "saved for backward", "saved for backward, each storage once (MiB)"),
        ("rfpn_cuda", "mask head saved", "CRBP mask head saved (MiB)"),
        ("pathfinder_cuda", "saved for backward", "saved for backward, each storage once (GB)"),
    ],
)
def test_gpu_tables_of_the_old_count_show_only_the_measured_peaks(name, old_column, new_column):
    """The GPU records predate the storage count: their tables leave the old saved-for-backward
    figures out (and say so); the same records marked as storage-counted show the column."""
    records = json.loads(open(os.path.join(RESULTS, name + ".json")).read())
    records = records if isinstance(records, list) else [records]
    text = render(name, records)
    header = text.splitlines()[0]
    assert old_column not in header and ("peak" in header or "memory" in header)
    assert "the old count" in text and "awaiting a re-run with the storage count" in text
    marked = json.loads(json.dumps(records))
    rows = marked[0]["memory"] if name != "memory_cuda" else marked
    for row in rows:
        row["saved_counter"] = SAVED_COUNTER
    assert new_column in render(name, marked).splitlines()[0]


def test_the_r_fpn_step_peaks_outside_the_block_are_tracked(copy):
    _edit(copy / "README.md", "(1,127, 1,611, 2,579 MiB", "(1,127, 1,612, 2,579 MiB")
    _edit(copy / "README.md", "(859.5 to 860.9 MiB)", "(859.5 to 861.0 MiB)")
    assert check_results(copy / "README.md", copy / "results") == [
        "H200 R-FPN: BPTT step peaks at N = 5, 10, 20 (MiB): the README says "
        "'1,127, 1,612, 2,579', rfpn_cuda.json '1,127, 1,611, 2,579'",
        "H200 R-FPN: C-RBP step peaks, lowest to highest (MiB): the README says "
        "'859.5 to 861.0', rfpn_cuda.json '859.5 to 860.9'",
    ]
