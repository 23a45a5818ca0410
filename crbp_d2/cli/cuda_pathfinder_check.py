"""Full-size Pathfinder check for a CUDA machine (< 10 minutes; no network needed).

1. Peak CUDA memory of one training step of the full-size PF14 hGRU (150 px, 25 channels,
   15x15, batch 32 on one device) for BPTT-6, C-BPTT-6, RBP-20 and C-RBP-20
   (paper Fig. 2a: BPTT-6 10.5 GB vs C-RBP 6 GB on a 12 GB Titan X).
2. Trains a full-size PF14 C-RBP-20 model on on-the-fly data for ``--train-minutes`` and
   evaluates it on held-out images.

    python tools/cuda_pathfinder_check.py --out output/cuda_check/pathfinder_cuda.json
    python tools/cuda_pathfinder_check.py --device cpu --tiny   # smoke test on a CPU

Uses only torch >= 2.1 APIs and this project's code.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from crbp_d2.pathfinder.config import REPO_ROOT
from crbp_d2.pathfinder.experiments.cuda_check import run_cuda_check


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out",
        default=os.path.join(REPO_ROOT, "output", "cuda_check", "pathfinder_cuda.json"),
        help="the JSON report (in an existing folder: FOLDER/pathfinder_cuda.json)",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--train-minutes", type=float, default=5.0)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the training part")
    p.add_argument("--tiny", action="store_true", help="small shapes (smoke test)")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(
            "error: CUDA is not available (use --device cpu --tiny for a smoke test)",
            file=sys.stderr,
        )
        return 2
    out = os.path.join(args.out, "pathfinder_cuda.json") if os.path.isdir(args.out) else args.out
    run_cuda_check(out, args.device, args.train_minutes, args.amp, args.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
