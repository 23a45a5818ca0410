"""Full-size Pathfinder check for a CUDA machine (< 10 minutes; no network needed).

1. Peak CUDA memory of one training step of the full-size PF14 hGRU (150 px, 25 channels,
   15x15, batch 32 on one device) for BPTT-6, C-BPTT-6, RBP-20 and C-RBP-20
   (paper Fig. 2a: BPTT-6 10.5 GB vs C-RBP 6 GB on a 12 GB Titan X).
2. Trains a full-size PF14 C-RBP-20 model on on-the-fly data for ``--train-minutes`` and
   evaluates it on held-out images.

    python tools/cuda_pathfinder_check.py --out OUT_DIR    # OUT_DIR/pathfinder_cuda.{json,md}
    python tools/cuda_pathfinder_check.py --out report.json  # report.{json,md}
    python tools/cuda_pathfinder_check.py --device cpu --tiny --train-minutes 0.05   # CPU smoke

--device defaults to cuda when a GPU is there, else cpu. On a CPU the memory records hold the bytes
saved for backward (``memory_measure`` says which measure was used). The output path is checked
before any work starts. Uses only torch >= 2.1 APIs and this project's code.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from crbp_d2.pathfinder.config import REPO_ROOT
from crbp_d2.pathfinder.experiments.cuda_check import run_cuda_check

from ._common import report_input_error, writable_output_file

REPORT_NAME = "pathfinder_cuda.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out",
        default=os.path.join(REPO_ROOT, "output", "cuda_check"),
        help=f"the JSON report: a .json file, or a folder (FOLDER/{REPORT_NAME})",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--train-minutes", type=float, default=5.0)
    p.add_argument("--amp", action="store_true", help="autocast for the training part")
    p.add_argument("--tiny", action="store_true", help="small shapes (smoke test)")
    args = p.parse_args(argv)
    if args.train_minutes < 0:
        p.error(f"--train-minutes must be >= 0, got {args.train_minutes}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print(
            "error: CUDA is not available (use --device cpu --tiny for a smoke test)",
            file=sys.stderr,
        )
        return 2
    try:
        out = writable_output_file(args.out, REPORT_NAME)
    except ValueError as error:
        return report_input_error("cuda_pathfinder_check.py", error)
    if device == "cpu" and not args.tiny:
        print("note: full-size shapes on a CPU are slow; --tiny is the CPU smoke test")
    run_cuda_check(out, device, args.train_minutes, args.amp, args.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
