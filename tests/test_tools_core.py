"""The memory benchmark and the README updater, run for real at tiny sizes."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_memory_writes_records_plot_and_table(tmp_path):
    out = tmp_path / "memory.json"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "benchmark_memory.py"),
        "--steps",
        "2",
        "4",
        "6",
        "--methods",
        "bptt",
        "crbp",
        "--size",
        "12",
        "--channels",
        "2",
        "--kernel",
        "3",
        "--neumann-steps",
        "3",
        "--device",
        "cpu",
        "--json",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    records = json.loads(out.read_text())
    assert {(r["method"], r["steps"]) for r in records} == {
        (m, s) for m in ("bptt", "crbp") for s in (2, 4, 6)
    }
    for r in records:
        assert {"method", "steps", "saved_bytes", "peak_bytes", "seconds"} <= set(r)
        assert r["peak_bytes"] > 0 and r["seconds"] > 0
    saved = {(r["method"], r["steps"]): r["saved_bytes"] for r in records}
    assert saved[("crbp", 2)] == saved[("crbp", 4)] == saved[("crbp", 6)]
    assert saved[("bptt", 6)] - saved[("bptt", 4)] == saved[("bptt", 4)] - saved[("bptt", 2)] > 0
    assert (tmp_path / "memory.png").stat().st_size > 0
    assert "| crbp | 6 |" in (tmp_path / "memory.md").read_text()


def test_benchmark_memory_rejects_unknown_method(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark_memory.py"), "--methods", "rpb"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown method(s) ['rpb']" in result.stderr


def test_update_readme_replaces_only_marked_blocks(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import update_readme

    (tmp_path / "a.md").write_text("| x |\n")
    block_b = "<!-- results:b -->\nkeep\n<!-- /results:b -->\n"
    text = "intro\n<!-- results:a -->\nold\n<!-- /results:a -->\n" + block_b
    new, missing = update_readme.update(text, str(tmp_path))
    assert new == "intro\n<!-- results:a -->\n| x |\n<!-- /results:a -->\n" + block_b
    assert missing == ["b"]


def test_cpu_model_name_parses_lscpu_output():
    from crbp_d2.utils import cpu_model_name, parse_lscpu_model

    text = "Architecture: x86_64\nModel name:    Intel(R) Xeon(R) Processor\nCPU(s): 2\n"
    assert parse_lscpu_model(text) == "Intel(R) Xeon(R) Processor"
    assert parse_lscpu_model("Architecture: x86_64\n") is None
    assert parse_lscpu_model("Model name:   \n") is None
    assert cpu_model_name().strip()
