"""The memory benchmark, the README updater and the command-line programs' packaging, run for
real at tiny sizes (no Detectron2 needed)."""

import ast
import importlib
import importlib.util
import json
from pathlib import Path

import pytest

from crbp_d2.cli import benchmark_memory, update_readme
from crbp_d2.utils import update_readme_blocks

ROOT = Path(__file__).resolve().parents[1]

# Pathfinder programs another change moves into crbp_d2/cli; until it lands their modules may be
# absent here. Every other entry point must resolve.
PATHFINDER_PROGRAMS = {
    "train_pathfinder",
    "generate_pathfinder",
    "pathfinder_baselines",
    "pathfinder_generalization",
    "pathfinder_steps",
    "pathfinder_state_space",
    "pathfinder_timecourse",
    "pathfinder_cpu_protocol",
    "pathfinder_extrapolation",
    "cuda_pathfinder_check",
    "benchmark_generator",
}


def test_benchmark_memory_writes_records_plot_and_table(tmp_path):
    out = tmp_path / "memory.json"
    argv = [
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
    assert benchmark_memory.main(argv) == 0
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


def test_benchmark_memory_rejects_unknown_method(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_memory.main(["--methods", "rpb"])
    assert exit_info.value.code == 2 and "unknown method(s) ['rpb']" in capsys.readouterr().err


def test_update_readme_replaces_only_marked_blocks(tmp_path):
    (tmp_path / "a.md").write_text("| x |\n")
    block_b = "<!-- results:b -->\nkeep\n<!-- /results:b -->\n"
    text = "intro\n<!-- results:a -->\nold\n<!-- /results:a -->\n" + block_b
    new, missing = update_readme_blocks(text, str(tmp_path))
    assert new == "intro\n<!-- results:a -->\n| x |\n<!-- /results:a -->\n" + block_b
    assert missing == ["b"]


def test_update_readme_check_then_update(tmp_path):
    (tmp_path / "a.md").write_text("| x |\n")
    provenance = {"device": "cpu", "torch": "2", "threads": 1, "git_commit": "0" * 40}
    (tmp_path / "a.json").write_text(json.dumps([{"x": 1, **provenance}]))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:a -->\nold\n<!-- /results:a -->\n")
    argv = ["--readme", str(readme), "--results", str(tmp_path)]
    assert update_readme.main([*argv, "--check"]) == 1  # out of date, left as it was
    assert "old" in readme.read_text()
    assert update_readme.main(argv) == 0
    assert readme.read_text() == "<!-- results:a -->\n| x |\n<!-- /results:a -->\n"
    assert update_readme.main([*argv, "--check"]) == 1  # its record lacks shared_machine
    (tmp_path / "a.json").write_text(json.dumps([{"x": 1, **provenance, "shared_machine": True}]))
    assert update_readme.main([*argv, "--check"]) == 0


def test_cpu_model_name_parses_lscpu_output():
    from crbp_d2.utils import cpu_model_name, parse_lscpu_model

    text = "Architecture: x86_64\nModel name:    Intel(R) Xeon(R) Processor\nCPU(s): 2\n"
    assert parse_lscpu_model(text) == "Intel(R) Xeon(R) Processor"
    assert parse_lscpu_model("Architecture: x86_64\n") is None
    assert parse_lscpu_model("Model name:   \n") is None
    assert cpu_model_name().strip()


def declared_console_scripts() -> dict:
    """{script name: "module:function"} of setup.py's console_scripts, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            entries = ast.literal_eval(node.value)["console_scripts"]
            return dict(tuple(part.strip() for part in e.split("=", 1)) for e in entries)
    raise AssertionError("setup.py declares no entry_points")


def test_every_console_script_resolves_to_a_callable_main():
    scripts = declared_console_scripts()
    assert len(scripts) >= len(PATHFINDER_PROGRAMS) + 6
    for script, target in scripts.items():
        module_name, function = target.split(":")
        name = module_name.rsplit(".", 1)[1]
        assert module_name == f"crbp_d2.cli.{name}" and function == "main", target
        assert script == "crbp-" + name.replace("_", "-"), (script, target)
        if name in {
            "train_net",
            "lazyconfig_train_net",
            "timestep_sweep",
            "demo",
            "benchmark_rfpn",
            "cuda_rfpn_check",
        }:
            pytest.importorskip("detectron2")
        assert callable(getattr(importlib.import_module(module_name), "main")), target


def test_every_python_tool_is_a_shim_with_a_console_script():
    """tools/NAME.py only runs crbp_d2.cli.NAME.main, and crbp-NAME installs the same program."""
    scripts = set(declared_console_scripts())
    for tool in sorted((ROOT / "tools").glob("*.py")):
        name = tool.stem
        assert f"crbp-{name.replace('_', '-')}" in scripts, f"{tool.name}: no console script"
        tree = ast.parse(tool.read_text())
        imports = sorted(
            (getattr(n, "module", None) or n.names[0].name, [a.name for a in n.names])
            for n in tree.body
            if isinstance(n, (ast.Import, ast.ImportFrom))
        )
        assert imports == [(f"crbp_d2.cli.{name}", ["main"]), ("sys", ["sys"])], tool.name
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not functions, f"{tool.name} defines {[f.name for f in functions]}: move them"
