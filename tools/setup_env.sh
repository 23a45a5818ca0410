#!/usr/bin/env bash
# All set-up in one idempotent script (called by `make test` / `make demo`):
#   tools/setup_env.sh [VENV_DIR]      (default .venv)
# Creates the virtual environment, installs the pinned requirements, Detectron2 v0.6 (see
# tools/install_detectron2.sh) and this package in editable mode. A re-run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.crbp_setup_stamp"
HASH="$(cat requirements.txt setup.py tools/install_detectron2.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && "$VENV/bin/python" -c "import crbp_d2.rfpn.config, detectron2.modeling" 2>/dev/null; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
bash tools/install_detectron2.sh "$VENV/bin/python"
echo "$HASH" >"$STAMP"
