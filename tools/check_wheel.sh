#!/usr/bin/env bash
# The wheel alone: build it, install it into an EMPTY virtual environment with no extras (pip
# brings torch and numpy, nothing else), import the core there and run one C-RBP training step;
# importing a front-end there must say in one line which extra to install.
#   tools/check_wheel.sh [WORK_DIR]          (default: a new temporary folder, removed at the end)
# Environment: BUILD_PYTHON builds the wheel (default .venv/bin/python, no build isolation);
# PYTHON makes the empty venv (default python3); WHEEL_CHECK_JSON=FILE writes the timings there.
set -euo pipefail
# a checkout on PYTHONPATH would make pip think the package is installed already (its egg-info)
unset PYTHONPATH PYTHONHOME
cd "$(dirname "$0")/.."
REPO="$PWD"
BUILD_PY="${BUILD_PYTHON:-.venv/bin/python}"
PY="${PYTHON:-python3}"
if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
t0=$(date +%s)
"$BUILD_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$REPO"
t1=$(date +%s)
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q "$WORK"/dist/crbp_d2-*.whl
t2=$(date +%s)
# -I and a foreign working directory: the installed package, not this checkout, is imported
(cd "$WORK" && OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$VPY" -I -c '
import importlib.metadata as md, subprocess, sys, time
import torch
import crbp_d2
from crbp_d2.recurrent import HGRUCell, RecurrentEngine
assert crbp_d2.__file__.startswith(sys.prefix), crbp_d2.__file__
names = {d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()}
heavy = {"scipy", "matplotlib", "opencv-python-headless", "torchvision", "yacs", "tensorboard",
         "pycocotools", "fvcore", "detectron2", "onnx", "onnxruntime", "pyyaml", "tqdm", "pillow"}
assert not names & heavy, f"the bare wheel pulled {sorted(names & heavy)}"
start = time.perf_counter()
torch.manual_seed(0)
engine = RecurrentEngine(HGRUCell(channels=4, kernel_size=3), steps=6, method="crbp")
optimizer = torch.optim.SGD(engine.parameters(), lr=0.1)
before = [p.detach().clone() for p in engine.parameters()]
out = engine(torch.rand(2, 4, 12, 12))
loss = out.state.square().mean() + 1e-3 * out.lcp
loss.backward()
optimizer.step()
moved = sum(not torch.equal(a, p) for a, p in zip(before, engine.parameters()))
assert torch.isfinite(loss) and moved > 0, (float(loss), moved)
step = time.perf_counter() - start
for module, extra in (("crbp_d2.tv", "torchvision"), ("crbp_d2.pathfinder", "pathfinder"),
                      ("crbp_d2.rfpn.config", "d2")):
    run = subprocess.run([sys.executable, "-I", "-c", f"import {module}"], capture_output=True,
                         text=True)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode and f"crbp-d2[{extra}]" in last, (module, run.stderr[-500:])
print(f"bare wheel: torch {torch.__version__}, {len(names)} distributions; one C-RBP step "
      f"{step:.2f} s (loss {float(loss):.4f}, {moved} parameters updated)")
')
t3=$(date +%s)
echo "wheel check ok: build $((t1 - t0)) s, venv + install $((t2 - t1)) s, import + step $((t3 - t2)) s, total $((t3 - t0)) s"
if [ -n "${WHEEL_CHECK_JSON:-}" ]; then
  "$BUILD_PY" -c 'import json, sys; from crbp_d2.utils import atomic_write_json, machine_record
keys = ("build_s", "venv_install_s", "import_step_s", "total_s")
rec = dict(zip(keys, map(int, sys.argv[2:6])), machine=machine_record("cpu"), shared_machine=True,
           command="tools/check_wheel.sh")
atomic_write_json(rec, sys.argv[1])' "$WHEEL_CHECK_JSON" $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) $((t3 - t0))
fi
