"""R-FPN (Detectron2) check for a CUDA machine: memory of BPTT-N vs C-RBP-N, AMP training steps.

See :mod:`crbp_d2.rfpn.experiments.cuda_check` for what is measured and the report's keys.

    python tools/cuda_rfpn_check.py --out OUT_DIR        # OUT_DIR/rfpn_cuda.{json,md,png}
    python tools/cuda_rfpn_check.py --out report.json    # report.{json,md,png}
    python tools/cuda_rfpn_check.py --tiny               # CPU smoke test (seconds)

--device defaults to cuda when a GPU is there, else cpu. On a CPU the memory is the bytes saved
for backward, and AMP runs as bfloat16 autocast (SOLVER.AMP.ENABLED is CUDA only); the report
says which. The output path is checked before any work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ..rfpn.experiments.benchmark import parse_variant
from ..rfpn.experiments.cuda_check import (
    REPORT_NAME,
    RFPNCheck,
    check_settings,
    run_rfpn_cuda_check,
)
from ._common import INPUT_ERRORS, report_input_error, writable_output_file

PROG = "cuda_rfpn_check.py"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    defaults = RFPNCheck()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out",
        default=os.path.join("output", "cuda_check"),
        help=f"the JSON report: a .json file, or a folder (FOLDER/{REPORT_NAME})",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--tiny", action="store_true", help="the CPU smoke test's sizes")
    p.add_argument("--config-file", default=None, help=f"default {defaults.config_file}")
    p.add_argument("--size", type=int, default=None, help=f"image side (default {defaults.size})")
    p.add_argument("--batch", type=int, default=None, help=f"default {defaults.batch}")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="N (default 5 10 20)")
    p.add_argument("--methods", nargs="+", default=None, help="default BPTT CRBP")
    p.add_argument("--amp-iters", type=int, default=None, help=f"default {defaults.amp_iters}")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    for method in args.methods or ():
        try:
            parse_variant(f"{method}-1")
        except ValueError as error:
            p.error(str(error))
    return args


def settings_from(args: argparse.Namespace) -> RFPNCheck:
    changes = {
        "config_file": args.config_file,
        "size": args.size,
        "batch": args.batch,
        "steps": tuple(args.steps) if args.steps else None,
        "methods": tuple(m.upper() for m in args.methods) if args.methods else None,
        "amp_iters": args.amp_iters,
        "device": args.device or ("cpu" if args.tiny else None),
        "opts": tuple(args.opts),
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    return RFPNCheck.tiny(**changes) if args.tiny else RFPNCheck(**changes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import torch

    args = parse_args(argv)
    try:
        settings = settings_from(args)
        out = writable_output_file(args.out, REPORT_NAME)
    except ValueError as error:
        return report_input_error(PROG, error)
    device = settings.resolved_device()
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return report_input_error(
            PROG, ValueError("CUDA is not available (use --tiny for a CPU smoke test)")
        )
    try:
        check_settings(settings)  # every config, before any model is built
    except INPUT_ERRORS as error:
        return report_input_error(PROG, error)
    run_rfpn_cuda_check(settings, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
