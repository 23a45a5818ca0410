#!/usr/bin/env bash
# Puts what tools/cuda_check.sh needs beyond a bare GPU image's PyTorch into .gpu_deps/ of this
# checkout (git-ignored; about 14 MB), for a GPU machine that cannot reach a package registry:
#
#   bash tools/gpu_bundle.sh [PYTHON]     (PYTHON: one that has them, default python3)
#
# The pure-Python packages (Detectron2 v0.6 as tools/install_detectron2.sh installs it, fvcore,
# iopath, yacs, omegaconf, antlr4, termcolor) are copied from PYTHON's environment; pycocotools and
# hotcoco (compiled extensions) are downloaded as manylinux wheels for the GPU machine's Python,
# GPU_PYTHON_VERSION (default 3.12), and unpacked. tools/cuda_check.sh puts .gpu_deps on
# PYTHONPATH after the machine's own packages, so those come first. Send .gpu_deps with the checkout.
set -euo pipefail
PY="${1:-python3}"
GPU_PYTHON_VERSION="${GPU_PYTHON_VERSION:-3.12}"
cd "$(dirname "$0")/.."
DEST="$PWD/.gpu_deps"
rm -rf "$DEST"
mkdir -p "$DEST"
for module in detectron2 fvcore iopath yacs omegaconf antlr4 termcolor; do
  dir="$("$PY" -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('$module').origin))")"
  cp -r "$dir" "$DEST/"
  echo "copied $module from $dir"
done
find "$DEST" -name __pycache__ -type d -prune -exec rm -rf {} +
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# Compiled: as manylinux wheels for the GPU machine's Python (hotcoco computes PQ in train_net's
# evaluation; the checks themselves need only pycocotools).
for package in pycocotools:2.0.8 hotcoco:1.3.0; do
  name="${package%%:*}"
  version="$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || echo "${package##*:}")"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$TMP" "$name==$version"
  "$PY" -m zipfile -e "$TMP"/"$name"-*.whl "$DEST"
done
echo "wrote $DEST ($(du -sh "$DEST" | cut -f1)) for Python $GPU_PYTHON_VERSION"
