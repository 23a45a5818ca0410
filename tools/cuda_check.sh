#!/usr/bin/env bash
# The measurements that need a CUDA GPU, as one short script for a lent GPU machine (about 5 min,
# at most 11: each part runs under its own timeout).
#
#   bash tools/cuda_check.sh OUT_DIR
#
# It needs only the machine's own PyTorch (>= 2.1) plus numpy, matplotlib, tqdm, yacs, pyyaml and
# OpenCV, and runs this checkout in place (no installation: PYTHONPATH is the checkout). It writes,
# under OUT_DIR:
#   memory_cuda.{json,png,md}   peak CUDA memory / saved bytes / time of one training step of the
#                               Pathfinder hGRU core (150x150, 25 ch, 15x15, batch 32 like the
#                               paper's per-GPU batch) for BPTT vs C-RBP at 6, 20, 80 steps
#   pathfinder_cuda.json        the Pathfinder CUDA check (tools/cuda_pathfinder_check.py): peak
#                               memory of full-size PF14 BPTT-6 vs C-RBP-20, then C-RBP-20 trained
#                               for $TRAIN_MINUTES whole minutes (default 2), evaluated on
#                               held-out images
#   env.txt                     nvidia-smi and torch versions
# Copy the files into docs/results/ and run `python tools/update_readme.py`.
set -uo pipefail
OUT="${1:?usage: tools/cuda_check.sh OUT_DIR}"
TRAIN_MINUTES="${TRAIN_MINUTES:-2}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } >"$OUT/env.txt" 2>&1
status=0
timeout 300 python3 tools/benchmark_memory.py --device cuda --batch 32 --steps 6 20 80 \
  --methods bptt crbp --json "$OUT/memory_cuda.json" || status=1
# The training part stops itself after TRAIN_MINUTES; the memory part before it and the evaluation
# after it take about 2 minutes, so the timeout leaves 4 minutes beyond the training.
timeout $((TRAIN_MINUTES * 60 + 240)) python3 tools/cuda_pathfinder_check.py \
  --out "$OUT/pathfinder_cuda.json" --train-minutes "$TRAIN_MINUTES" || status=1
exit $status
