"""Anderson acceleration against plain iteration at a trained Pathfinder model's fixed point
(:mod:`crbp_d2.benchmarks.solvers`); writes ``OUT.json`` and ``OUT.md``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from ..benchmarks import solvers
from ..utils import cpu_description, write_results
from ._common import one_line_errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmark_solvers.py",
        description=solvers.__doc__.split("\n\n")[0],
    )
    parser.add_argument("--checkpoint", required=True, help="a Pathfinder trainer checkpoint")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="N (default: training steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="results stem: OUT.json and OUT.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with one_line_errors("solvers", (FileNotFoundError, ValueError)):
        records = solvers.pathfinder_solver_comparison(args.checkpoint, args.images, args.steps)
    target = records[0]
    note = (
        f"\n\nTarget: the relative residual {target['target_residual']:.2e} of "
        f"{target['steps']} plain iterations, on {args.images} test images of `{args.checkpoint}`; "
        f"Anderson's budget {records[-1]['budget']} evaluations. Measured on {cpu_description()}, "
        f"torch {torch.__version__}, {args.threads} thread(s) (`python "
        "tools/benchmark_solvers.py`).\n"
    )
    write_results(args.out, records, solvers.solver_table(records) + note)
    print(solvers.solver_table(records) + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
