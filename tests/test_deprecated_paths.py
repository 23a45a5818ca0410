"""The import paths the README used before the Detectron2 front-end moved to crbp_d2.rfpn keep
working for one version, each with a DeprecationWarning that names the new path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MOVED = [  # old module, new module, a name it holds
    ("crbp_d2.config", "crbp_d2.rfpn.config", "get_crbp_cfg"),
    ("crbp_d2.lazy", "crbp_d2.rfpn.lazy_config", "build_engine_from_keys"),
    ("crbp_d2.modeling.export", "crbp_d2.rfpn.modeling.export", "export_mask_head"),
    ("crbp_d2.modeling", "crbp_d2.rfpn.modeling", "RecurrentMaskHead"),
]
# In a fresh interpreter: each old path's warnings, and whether it gives the new path's objects.
PROBE = """
import importlib, json, sys, warnings
import crbp_d2.rfpn  # Detectron2's own deprecation warnings happen here, not below
found = {}
for old, new, name in json.loads(sys.argv[1]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    same = getattr(module, name) is getattr(importlib.import_module(new), name)
    found[old] = [messages, same]
print(json.dumps(found))
"""


def test_old_paths_warn_and_give_the_same_objects():
    pytest.importorskip("detectron2")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(MOVED)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for old, new, _ in MOVED:
        messages, same = found[old]
        assert same, old
        if old == "crbp_d2.modeling":  # already imported (and warned) as export's package
            continue
        assert any(f"{old} moved to {new}" in m and "removed in crbp-d2" in m for m in messages)
    assert any("crbp_d2.modeling moved to" in m for m in found["crbp_d2.modeling.export"][0])


def test_old_command_runs_the_new_program():
    done = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-m", "crbp_d2.benchmarks.solvers"]
        + ["--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: benchmark_solvers.py" in done.stdout
    assert "moved to tools/benchmark_solvers.py" in done.stderr
