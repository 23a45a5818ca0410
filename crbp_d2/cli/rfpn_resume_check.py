"""Is a resumed Detectron2 run the uninterrupted one on this device
(:mod:`crbp_d2.rfpn.experiments.resume`)? Writes the JSON record and a Markdown table."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from ..rfpn.experiments import resume
from ._common import report_input_error, writable_output_file


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rfpn_resume_check.py",
        description=resume.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="a .json file, or a folder for resume.json")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--stop-at", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        out = writable_output_file(args.out, "resume.json")
        if not 0 < args.stop_at < args.iters:
            raise ValueError(f"need 0 < --stop-at < --iters, got {args.stop_at}, {args.iters}")
    except ValueError as error:
        return report_input_error("resume_determinism", error)
    record = resume.run_resume_determinism(out, args.device, args.iters, args.stop_at)
    for key in ("uninterrupted_vs_uninterrupted", "uninterrupted_vs_resumed"):
        print(f"{key}: bit-equal {record[key]['bit_equal']}, max abs {record[key]['max_abs']:.3g}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
