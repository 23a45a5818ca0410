#!/usr/bin/env python
"""summary.md of a tools/cuda_check.sh run (see --help).

The program is crbp_d2.cli.cuda_check_summary (also installed as ``crbp-cuda-check-summary``).
"""

import sys

from crbp_d2.cli.cuda_check_summary import main

if __name__ == "__main__":
    sys.exit(main())
