"""The way of ``TIMESTEPS`` from a YAML file to the engine, measured on both front-ends: the
Detectron2 way is at most as long as the Pathfinder one.

The way is read from the calls themselves (``sys.setprofile``), from the front-end's config
loader (``load_config`` / ``get_crbp_cfg``) to its model builder (``build_model``; Detectron2's
for the head): at each call that reads the recurrent node into a spec (``spec_from_node``) or
builds the engine from it (``RecurrentEngine.from_spec``), the project's frames on the stack,
root first. A walker goes down each such stack from where the previous one left it (climbing back
to the frame both share is not a hop); its sequence of files, consecutive repeats merged, is the
way. Measured: the project files on it, the hops between them, the revisits (a file entered
again after the way left it). Detectron2's own frames (the registry, ``configurable``) are not
the project's and are not counted; the YAML ``_BASE_`` chain is the config's depth, not the
code's, and is not counted either.

    python tests/test_yaml_to_engine.py   # prints both ways
    python tests/test_yaml_to_engine.py --record docs/results/yaml_to_engine.json

The package measured is the one imported (``PYTHONPATH=CHECKOUT`` measures another checkout);
the record in ``docs/results/yaml_to_engine.json`` is what the README's layout section cites, and
a test checks it is the way measured now.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

import crbp_d2

PACKAGE = Path(crbp_d2.__file__).resolve().parent
ROOT = PACKAGE.parent
RECORD = ROOT / "docs" / "results" / "yaml_to_engine.json"
MARKERS = {("spec.py", "spec_from_node"), ("engine.py", "from_spec")}


def _project_file(filename: str) -> str:
    """The path of ``filename`` under the package (``rfpn/config.py``), or "" if not ours."""
    try:
        return str(Path(filename).resolve().relative_to(PACKAGE))
    except ValueError:
        return ""


def trace_way(run: Callable[[], object]) -> List[str]:
    """The files of the way (see the module's docstring) while ``run()`` runs."""
    stacks: List[List[Tuple[int, str]]] = []

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if (Path(code.co_filename).name, code.co_name) not in MARKERS:
            return
        if not _project_file(code.co_filename):
            return
        stack = []
        f = frame
        while f is not None:
            rel = _project_file(f.f_code.co_filename)
            if rel:
                stack.append((id(f), rel))
            f = f.f_back
        stacks.append(stack[::-1])

    old = sys.getprofile()
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(old)
    way: List[str] = []
    previous: List[Tuple[int, str]] = []
    for stack in stacks:
        shared = 0
        while shared < min(len(stack), len(previous)) and stack[shared] == previous[shared]:
            shared += 1
        for _, rel in stack[shared:]:
            if not way or way[-1] != rel:
                way.append(rel)
        previous = stack
    return way


def measure(way: List[str]) -> Dict[str, int]:
    """Files, hops and revisits of a way."""
    revisits = sum(1 for i, rel in enumerate(way) if rel in way[:i])
    return {"files": len(set(way)), "hops": len(way) - 1, "revisits": revisits}


def pathfinder_way() -> List[str]:
    from crbp_d2.pathfinder.config import CONFIG_DIR, load_config
    from crbp_d2.pathfinder.modeling import build_model

    def run():
        cfg = load_config(os.path.join(CONFIG_DIR, "pf14_crbp20.yaml"), ["MODEL.CHANNELS", "4"])
        return build_model(cfg)

    return trace_way(run)


def detectron2_way() -> List[str]:
    from crbp_d2.rfpn.config import get_crbp_cfg

    from detectron2.modeling import build_model

    def run():
        config = ROOT / "configs" / "quick" / "R-FPN-CRBP-synthetic.yaml"
        cfg = get_crbp_cfg(str(config), ["MODEL.DEVICE", "cpu"])
        return build_model(cfg)

    return trace_way(run)


def test_the_detectron2_way_is_at_most_as_long_as_the_pathfinder_way():
    pytest.importorskip("detectron2")
    pathfinder, detectron2 = pathfinder_way(), detectron2_way()
    # both ways start at the config loader and end at the engine
    assert pathfinder[0] == "pathfinder/config.py" and pathfinder[-1] == "recurrent/engine.py"
    assert detectron2[0] == "rfpn/config.py" and detectron2[-1] == "recurrent/engine.py"
    assert "rfpn/modeling/recurrent_mask_head.py" in detectron2
    for name, value in measure(detectron2).items():
        assert value <= measure(pathfinder)[name], (name, detectron2, pathfinder)
    # the head does not climb back into the config module
    head = detectron2.index("rfpn/modeling/recurrent_mask_head.py")
    assert "rfpn/config.py" not in detectron2[head:], detectron2


def test_the_walker_counts_a_climb_back_as_a_revisit():
    """The measure itself: a way that goes back into a file it left is longer."""
    assert measure(["a.py", "b.py", "c.py"]) == {"files": 3, "hops": 2, "revisits": 0}
    assert measure(["a.py", "b.py", "a.py", "b.py"]) == {"files": 2, "hops": 3, "revisits": 2}


def both_ways() -> Dict[str, dict]:
    """``{"pathfinder": {"way": [...], "files": ..., "hops": ..., "revisits": ...}, ...}``."""
    ways = {"pathfinder": pathfinder_way(), "detectron2": detectron2_way()}
    return {name: {"way": way, **measure(way)} for name, way in ways.items()}


def test_the_recorded_ways_are_the_ways_measured_now():
    """The README cites docs/results/yaml_to_engine.json: it must not go stale."""
    pytest.importorskip("detectron2")
    with open(RECORD) as f:
        recorded = json.load(f)
    assert recorded["ways"] == both_ways()


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    ways = both_ways()
    for label, measured in ways.items():
        numbers = {k: v for k, v in measured.items() if k != "way"}
        print(f"{label}: {' -> '.join(measured['way'])}  {numbers}")
    if sys.argv[1:2] == ["--record"]:
        record = {
            "what": "the way of TIMESTEPS from the config loader to the engine "
            "(tests/test_yaml_to_engine.py: project files on the call stacks of spec_from_node "
            "and RecurrentEngine.from_spec)",
            "configs": {
                "pathfinder": "configs/pathfinder/pf14_crbp20.yaml",
                "detectron2": "configs/quick/R-FPN-CRBP-synthetic.yaml",
            },
            "commit": _commit(),
            "ways": ways,
        }
        with open(sys.argv[2], "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        print(f"wrote {sys.argv[2]}")
