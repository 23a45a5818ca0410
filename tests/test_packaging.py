"""Installs: the wheel needs torch and numpy only, each front-end has an extra, the dev
requirements hold every extra, a front-end imported without its extra says in one line which to
install, and the core runs with every front-end package absent. The real check (build the wheel,
install it into an empty venv, one C-RBP step there) is tools/check_wheel.sh, run by the slow
test below and by `make check-wheel`."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRONT_END_PACKAGES = (
    "torchvision",
    "cv2",
    "scipy",
    "yacs",
    "yaml",
    "matplotlib",
    "tqdm",
    "PIL",
    "fvcore",
    "pycocotools",
    "detectron2",
    "onnx",
    "onnxruntime",
    "tensorboard",
)


def setup_kwargs() -> dict:
    """The keyword arguments setup.py passes to setuptools.setup (nothing is built)."""
    import runpy

    import setuptools

    captured: dict = {}
    real_setup = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        runpy.run_path(str(REPO / "setup.py"))
    finally:
        setuptools.setup = real_setup
    return captured


def names(requirements) -> set:
    return {re.split(r"[<>=!~ ;\[]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_the_wheel_needs_torch_and_numpy_only_and_each_front_end_has_an_extra():
    kwargs = setup_kwargs()
    assert names(kwargs["install_requires"]) == {"torch", "numpy"}
    extras = kwargs["extras_require"]
    assert {"pathfinder", "d2", "torchvision", "onnx", "all"} <= set(extras)
    for extra, reqs in extras.items():
        assert names(reqs) <= names(extras["all"]), extra
        assert "detectron2" not in names(reqs)  # not on PyPI: tools/install_detectron2.sh
    assert {"opencv-python-headless", "scipy", "yacs"} <= names(extras["pathfinder"])
    assert names(extras["pathfinder"]) <= names(extras["d2"])
    assert {"torchvision", "pycocotools"} <= names(extras["torchvision"])
    assert {"onnx", "onnxruntime", "onnxscript"} <= names(extras["onnx"])


def test_the_dev_requirements_install_every_extra():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    pinned = names(line.split("#")[0] for line in lines if line.split("#")[0].strip())
    assert names(setup_kwargs()["extras_require"]["all"]) <= pinned


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )


@pytest.mark.parametrize(
    "module, blocked, expected",
    [
        (
            "crbp_d2.tv",
            "torchvision",
            "crbp_d2.tv needs torchvision: pip install 'crbp-d2[torchvision]'",
        ),
        (
            "crbp_d2.pathfinder",
            "cv2",
            "needs opencv-python-headless: pip install 'crbp-d2[pathfinder]'",
        ),
        ("crbp_d2.rfpn.config", "fvcore", "needs fvcore: pip install 'crbp-d2[d2]'"),
        (
            "crbp_d2.rfpn.modeling",
            "detectron2",
            "needs Detectron2 v0.6, which is not on PyPI: bash tools/install_detectron2.sh",
        ),
        ("crbp_d2.onnx_export", "onnxruntime", None),  # imports; the export itself checks
    ],
)
def test_a_front_end_without_its_extra_says_which_to_install(module, blocked, expected):
    run = run_python(f"import sys; sys.modules[{blocked!r}] = None\nimport {module}")
    if expected is None:
        assert run.returncode == 0, run.stderr[-1000:]
        return
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("crbp_d2._extras.MissingExtraError: ") and last.endswith(expected)


def test_onnx_export_without_its_extra_says_which_to_install():
    run = run_python(
        "import sys; sys.modules['onnxscript'] = None\n"
        "import torch; from crbp_d2.onnx_export import export_mask_head_onnx\n"
        "export_mask_head_onnx(torch.nn.Identity(), torch.zeros(2, 1, 14, 14), 'x.onnx')"
    )
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].endswith("pip install 'crbp-d2[onnx]'")
    assert not (REPO / "x.onnx").exists()


def test_the_core_trains_with_every_front_end_package_absent():
    """What the bare wheel has (a cheap stand-in for tools/check_wheel.sh): crbp_d2.recurrent
    imports and takes a C-RBP step with the front-ends' packages blocked."""
    run = run_python(
        f"import sys\nfor name in {FRONT_END_PACKAGES!r}: sys.modules[name] = None\n"
        "import torch\nfrom crbp_d2.recurrent import HGRUCell, RecurrentEngine\n"
        "engine = RecurrentEngine(HGRUCell(channels=3, kernel_size=3), steps=4, method='crbp')\n"
        "out = engine(torch.rand(2, 3, 8, 8)); (out.state.mean() + out.lcp).backward()\n"
        "assert all(p.grad is not None for p in engine.parameters())\n"
    )
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.slow
def test_the_wheel_installs_into_an_empty_venv_and_trains_the_core(tmp_path):
    """tools/check_wheel.sh: wheel -> empty venv (torch from the local wheel cache; 7 min on a
    shared 2-core machine, docs/results/wheel_check.json) -> one C-RBP step there."""
    env = dict(os.environ, BUILD_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    run = subprocess.run(
        ["bash", str(REPO / "tools" / "check_wheel.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "wheel check ok" in run.stdout and "one C-RBP step" in run.stdout
