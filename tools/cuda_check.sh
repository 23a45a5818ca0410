#!/usr/bin/env bash
# The measurements that need a CUDA GPU, as one short script for a lent GPU machine (about 8 min).
#
#   bash tools/cuda_check.sh OUT_DIR
#
# It needs only the machine's own PyTorch (>= 2.1) plus numpy, matplotlib and tqdm, and runs this
# checkout in place (no installation). It writes, under OUT_DIR:
#   memory_cuda.{json,png,md}   peak CUDA memory / saved bytes / time of one training step of the
#                               Pathfinder hGRU core (150x150, 25 ch, 15x15, batch 32 like the
#                               paper's per-GPU batch) for BPTT vs C-RBP at 6, 20, 80 steps
#   pathfinder_cuda.*           the Pathfinder CUDA check (peak memory of full-size PF14 BPTT-6 vs
#                               C-RBP-20 and a short training run), when that script exists
#   env.txt                     nvidia-smi and torch versions
# Copy the files into docs/results/ and run `python tools/update_readme.py`.
set -uo pipefail
OUT="${1:?usage: tools/cuda_check.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } >"$OUT/env.txt" 2>&1
status=0
timeout 300 python3 tools/benchmark_memory.py --device cuda --batch 32 --steps 6 20 80 \
  --methods bptt crbp --json "$OUT/memory_cuda.json" || status=1
if [ -f tools/cuda_pathfinder_check.py ]; then
  timeout 240 python3 tools/cuda_pathfinder_check.py --out "$OUT" || status=1
fi
exit $status
