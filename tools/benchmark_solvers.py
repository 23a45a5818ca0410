#!/usr/bin/env python
"""Anderson acceleration against plain iteration at a trained Pathfinder model's fixed point.

The program is crbp_d2.cli.benchmark_solvers (also installed as ``crbp-benchmark-solvers``).
"""

import sys

from crbp_d2.cli.benchmark_solvers import main

if __name__ == "__main__":
    sys.exit(main())
