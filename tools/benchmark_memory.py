#!/usr/bin/env python
"""Memory and time of one training step vs recurrent steps, per learning method.

The program is crbp_d2.cli.benchmark_memory (also installed as ``crbp-benchmark-memory``).
"""

import sys

from crbp_d2.cli.benchmark_memory import main

if __name__ == "__main__":
    sys.exit(main())
