#!/usr/bin/env bash
# The measurements that need a CUDA GPU, as one script for a lent GPU machine (about 7 minutes;
# every part runs under its own timeout, all of them together at most 10 minutes).
#
#   bash tools/cuda_check.sh OUT_DIR            # on the GPU
#   bash tools/cuda_check.sh OUT_DIR --smoke    # every part on the CPU at tiny sizes (< 5 min;
#                                               # tests/test_cuda_check.py runs it)
#
# It runs this checkout in place (PYTHONPATH is the checkout; nothing is installed) with the
# machine's own python3 and PyTorch (>= 2.1) plus numpy, matplotlib, tqdm, pyyaml, OpenCV, yacs and,
# for the R-FPN part, Detectron2 v0.6 with fvcore, iopath, omegaconf, termcolor and pycocotools.
# Where those are missing (a bare GPU image), `bash tools/gpu_bundle.sh` on a machine that has them
# puts them into .gpu_deps/ of the checkout, which this script puts on PYTHONPATH after the
# machine's own packages. A part that
# fails (or times out) does not stop the others; the exit status is then 1. Everything is written
# under OUT_DIR and nowhere else:
#   env.json                 torch / CUDA versions, the device, nvidia-smi's output, the mode
#   memory_cuda.{json,md,png}  one training step of the Pathfinder hGRU core (150x150, 25 ch,
#                            15x15, batch 32 like the paper's per-GPU batch) for BPTT vs C-RBP at
#                            6, 20, 80 steps (tools/benchmark_memory.py; peak_kind says the measure)
#   rfpn_cuda.{json,md,png}  the R-FPN (Detectron2) check (tools/cuda_rfpn_check.py): memory of a
#                            Panoptic FPN training step with the mask head trained by BPTT-N vs
#                            C-RBP-N, N = 5, 10, 20, then C-RBP-10 trained for 20 iterations with
#                            SOLVER.AMP.ENABLED True (float16 + GradScaler) and in float32
#   pathfinder_cuda.json     the Pathfinder check (tools/cuda_pathfinder_check.py): peak memory of
#                            full-size PF14 BPTT-6 / C-BPTT-6 / RBP-20 / C-RBP-20, then C-RBP-20
#                            trained for $TRAIN_MINUTES minutes (default 2) and evaluated
#   resume_cuda.{json,md}    is a resumed Detectron2 run the uninterrupted one here? (the tiny
#                            test config, 6 iterations: two uninterrupted runs, one stopped at 3
#                            and resumed; tools/rfpn_resume_check.py)
#   speed_cuda.{json,md,png}  one training step of the hGRU core alone (25 ch, 15x15, 150 px,
#                            batch 32): BPTT-6, C-RBP-20 eager, with the graph-free steps replayed
#                            from a CUDA graph (CUDA_GRAPH), with the compiled cell (COMPILE_CELL)
#                            and with the cheap forward/backward; gradient error of the graph and
#                            compiled variants against eager (python -m crbp_d2.benchmarks.speed)
#   summary.md               the tables of all parts (tools/cuda_check_summary.py)
# --smoke: the same files from the CPU at tiny sizes (memory = bytes saved for backward, AMP =
# bfloat16 autocast; each JSON says which). Copy the files into docs/results/ and see README's
# "GPU checks" for putting the tables into the README.
set -uo pipefail
usage="usage: bash tools/cuda_check.sh OUT_DIR [--smoke]"
OUT="${1:?$usage}"
MODE="${2:-gpu}"
case "$MODE" in
  gpu) ;;
  --smoke) MODE=smoke ;;
  *) echo "cuda_check.sh: error: unknown option '$MODE' ($usage)" >&2; exit 2 ;;
esac
if ! mkdir -p "$OUT" 2>/dev/null || [ ! -d "$OUT" ] || [ ! -w "$OUT" ]; then
  echo "cuda_check.sh: error: cannot write to OUT_DIR '$OUT'" >&2
  exit 2
fi
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .gpu_deps ]; then
  # After the machine's own packages: PYTHONPATH comes before site-packages in sys.path, so
  # site-packages is named first.
  SITE="$("$PY" -c "import sys; print(':'.join(p for p in sys.path if p.endswith('-packages')))" 2>/dev/null || true)"
  export PYTHONPATH="$PYTHONPATH${SITE:+:$SITE}:$PWD/.gpu_deps"
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "cuda_check.sh: error: $PY cannot import torch (install PyTorch >= 2.1 for it, or name a python that has it: PYTHON=/path/to/python bash tools/cuda_check.sh ...)" >&2
  exit 2
fi
if [ "$MODE" = smoke ]; then
  TRAIN_MINUTES="${TRAIN_MINUTES:-0.02}"
  MEMORY_ARGS=(--device cpu --batch 1 --size 24 --channels 4 --kernel 3 --steps 2 4)
  PATHFINDER_ARGS=(--device cpu --tiny)
  RFPN_ARGS=(--device cpu --tiny)
  SPEED_ARGS=(--core-device cpu --tiny --iters 1)
  DEVICE=cpu
else
  TRAIN_MINUTES="${TRAIN_MINUTES:-2}"
  if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "cuda_check.sh: error: $PY sees no CUDA GPU (--smoke runs every part on the CPU)" >&2
    exit 2
  fi
  MEMORY_ARGS=(--device cuda --batch 32 --steps 6 20 80)
  PATHFINDER_ARGS=(--device cuda)
  RFPN_ARGS=(--device cuda)
  SPEED_ARGS=(--core-device cuda --iters 5)
  DEVICE=cuda
fi
# Timeouts: 60 + 100 + (TRAIN_MINUTES * 60 + 150) + 60 + 75 + 30 s = 9.9 minutes with the default
# 2 training minutes (the speed part is new and has not run on a GPU yet) (on an H200 the parts took 15, 33, 170 and 25 s). The Pathfinder part stops its training after TRAIN_MINUTES; its memory runs before and
# the evaluation after take well under 2.5 minutes on a GPU, which its timeout adds.
PATHFINDER_TIMEOUT=$(awk -v m="$TRAIN_MINUTES" 'BEGIN { printf "%d", m * 60 + 150 + 0.999 }')

"$PY" - "$OUT/env.json" "$MODE" <<'PYEOF' || echo "cuda_check.sh: env.json failed" >&2
import json, platform, shutil, subprocess, sys
import torch
from crbp_d2.utils.machine import device_description
out, mode = sys.argv[1:3]
cuda = torch.cuda.is_available()
smi = shutil.which("nvidia-smi")
env = {
    "mode": mode,
    "python": platform.python_version(),
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "cuda_available": cuda,
    "device": device_description("cuda" if cuda else "cpu"),
    "nvidia_smi": subprocess.run([smi], capture_output=True, text=True).stdout if smi else None,
}
with open(out, "w") as f:
    json.dump(env, f, indent=2)
PYEOF

status=0
run_part() {  # run_part NAME TIMEOUT_SECONDS COMMAND...
  local name="$1" seconds="$2"
  shift 2
  echo "== $name (timeout ${seconds}s)"
  timeout "$seconds" "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "== $name: timed out after ${seconds}s" >&2 || echo "== $name: failed ($rc)" >&2
    status=1
  fi
}
run_part "hGRU core memory" 60 "$PY" tools/benchmark_memory.py "${MEMORY_ARGS[@]}" \
  --methods bptt crbp --json "$OUT/memory_cuda.json"
run_part "R-FPN check" 100 "$PY" tools/cuda_rfpn_check.py "${RFPN_ARGS[@]}" --out "$OUT"
run_part "Pathfinder check" "$PATHFINDER_TIMEOUT" "$PY" tools/cuda_pathfinder_check.py \
  "${PATHFINDER_ARGS[@]}" --out "$OUT" --train-minutes "$TRAIN_MINUTES"
run_part "resume determinism" 60 "$PY" -m crbp_d2.cli.rfpn_resume_check \
  --device "$DEVICE" --out "$OUT/resume_cuda.json"
run_part "speed: CUDA graph and compiled cell" 75 "$PY" -m crbp_d2.benchmarks.speed \
  "${SPEED_ARGS[@]}" --out "$OUT/speed_cuda"
run_part "summary" 30 "$PY" tools/cuda_check_summary.py "$OUT"
exit $status
