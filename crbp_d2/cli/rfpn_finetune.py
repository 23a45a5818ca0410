"""A fresh recurrent head fine-tuned on a trained FPN against R-FPN trained from scratch on the
same budget (:mod:`crbp_d2.rfpn.experiments.finetune`); writes ``docs/results/rfpn_finetune``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..rfpn.experiments import finetune
from ._common import one_line_errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rfpn_finetune.py",
        description=finetune.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[500, finetune.RECIPE_STEPS])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads of each run")
    parser.add_argument("--out-dir", default="output/rfpn_finetune", help="the runs")
    parser.add_argument("--results", default="docs/results/rfpn_finetune", help="results stem")
    parser.add_argument(
        "--fpn-weights", default=None, help="start from this FPN checkpoint instead of training one"
    )
    args = parser.parse_args(argv)
    with one_line_errors("rfpn_finetune", (FileNotFoundError, ValueError, RuntimeError)):
        finetune.run_finetune_vs_scratch(
            args.budgets, args.seeds, args.out_dir, args.results, args.threads, args.fpn_weights
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
