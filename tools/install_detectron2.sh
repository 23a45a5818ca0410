#!/usr/bin/env bash
# Installs real Detectron2 v0.6 (pure Python) into the given Python environment.
#
#   tools/install_detectron2.sh [PYTHON]        (default: python3)
#
# Skipped when a working detectron2 is already importable, so a user who installed upstream
# Detectron2 (e.g. `pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'`)
# keeps theirs. Otherwise: Detectron2 is not on PyPI under its own name; the sdist
# `pb1-detectron2==0.6` holds upstream tag v0.6's Python code byte for byte but lacks the C++
# sources (so `_C` cannot be built) and packages the model-zoo configs from the wrong folder.
# We download it hash-pinned, move the configs, drop the extension and install it. The missing
# `_C`, numpy>=1.24 and Pillow>=10 are handled at run time by crbp_d2/rfpn/_compat.py.
set -euo pipefail
PY="${1:-python3}"
if "$PY" - <<'PYEOF' 2>/dev/null
import importlib.util, sys
sys.path.insert(0, ".")
import crbp_d2.rfpn._compat  # noqa: F401  (makes a pure-Python v0.6 importable)
import detectron2.modeling, detectron2.engine  # noqa: F401
PYEOF
then
  echo "detectron2 already importable: $("$PY" -c 'import crbp_d2.rfpn.config, detectron2; print(detectron2.__version__, detectron2.__file__)')"
  exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "pb1-detectron2==0.6 --hash=sha256:5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29" >"$TMP/d2.txt"
"$PY" -m pip download --no-deps --no-build-isolation --require-hashes -r "$TMP/d2.txt" -d "$TMP"
tar -xzf "$TMP/pb1-detectron2-0.6.tar.gz" -C "$TMP"
SRC="$TMP/pb1-detectron2-0.6"
mv "$SRC/detectron2/model_zoo/configs" "$SRC/configs"
sed -i 's/^    ext_modules=get_extensions(),$/    ext_modules=[],/' "$SRC/setup.py"
grep -q '^    ext_modules=\[\],$' "$SRC/setup.py" || { echo "install_detectron2: setup.py patch did not apply" >&2; exit 1; }
"$PY" -m pip install --no-build-isolation --no-deps "$SRC"
"$PY" -c "import crbp_d2.rfpn.config, detectron2.modeling; print('detectron2', detectron2.__version__, 'ready')"
