#!/usr/bin/env python
"""Train-step time and peak memory of Panoptic FPN vs R-FPN trained with BPTT or C-RBP.

The program is crbp_d2.cli.benchmark_rfpn (also installed as ``crbp-benchmark-rfpn``).
"""

import sys

from crbp_d2.cli.benchmark_rfpn import main

if __name__ == "__main__":
    sys.exit(main())
