"""The Pathfinder package's shape: no Detectron2 anywhere in it, light package import, working
lazy exports, and tools that are thin shims over crbp_d2.cli."""

import ast
import importlib
import os
import subprocess
import sys

import pytest

import crbp_d2.pathfinder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHFINDER_TOOLS = (
    "train_pathfinder",
    "generate_pathfinder",
    "pathfinder_baselines",
    "pathfinder_generalization",
    "pathfinder_steps",
    "pathfinder_state_space",
    "pathfinder_timecourse",
    "pathfinder_cpu_protocol",
    "cuda_pathfinder_check",
    "benchmark_generator",
)


def _fresh_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_no_pathfinder_module_imports_detectron2():
    """Every module of crbp_d2.pathfinder (the package walked) and the Pathfinder CLIs."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import crbp_d2.pathfinder as pf\n"
        "names = [m.name for m in pkgutil.walk_packages(pf.__path__, pf.__name__ + '.')]\n"
        f"names += ['crbp_d2.cli.' + n for n in {PATHFINDER_TOOLS!r}]\n"
        "names += ['crbp_d2.cli.pathfinder_args']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'detectron2'])\n"
    )
    count, loaded = _fresh_python(code).splitlines()
    assert int(count) >= 20  # the walk found the subpackages' modules
    assert loaded == "[]"


def test_package_import_is_light_and_storage_needs_no_torch():
    """``import crbp_d2.pathfinder`` imports neither torch nor OpenCV (lazy exports), and the
    storage module the generation workers import needs no torch."""
    code = (
        "import sys\n"
        "import crbp_d2.pathfinder\n"
        "print(sorted(m for m in ('torch', 'cv2') if m in sys.modules))\n"
        "import crbp_d2.pathfinder.data.storage\n"
        "print('torch' in sys.modules)\n"
    )
    assert _fresh_python(code).splitlines() == ["[]", "False"]


def test_every_exported_name_resolves_to_its_module():
    for name in crbp_d2.pathfinder.__all__:
        value = getattr(crbp_d2.pathfinder, name)
        assert value is not None, name
    assert crbp_d2.pathfinder.Trainer.__module__ == "crbp_d2.pathfinder.train.loop"
    assert "Trainer" in dir(crbp_d2.pathfinder)
    with pytest.raises(AttributeError, match="no attribute 'Trainr'"):
        crbp_d2.pathfinder.Trainr


@pytest.mark.parametrize("name", PATHFINDER_TOOLS)
def test_tool_is_a_shim_over_its_cli_module(name, capsys):
    path = os.path.join(ROOT, "tools", f"{name}.py")
    tree = ast.parse(open(path).read())
    docstring, *statements = tree.body
    assert ast.get_docstring(tree), f"{name}: no docstring"
    imports = [ast.dump(s) for s in statements if isinstance(s, (ast.Import, ast.ImportFrom))]
    assert imports == [
        ast.dump(ast.parse("import sys").body[0]),
        ast.dump(ast.parse(f"from crbp_d2.cli.{name} import main").body[0]),
    ]
    (guard,) = [s for s in statements if not isinstance(s, (ast.Import, ast.ImportFrom))]
    expected = 'if __name__ == "__main__":\n    sys.exit(main())'
    assert ast.dump(guard) == ast.dump(ast.parse(expected).body[0])
    module = importlib.import_module(f"crbp_d2.cli.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_a_tool_file_runs_as_a_script(tmp_path):
    tool = os.path.join(ROOT, "tools", "generate_pathfinder.py")
    result = subprocess.run(
        [sys.executable, tool, "--num", "-1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "error: --num must be >= 0, got -1" in result.stderr
