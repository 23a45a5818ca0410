#!/usr/bin/env python
"""Every learning method and forward solver of the engine: cost and gradient fidelity.

The program is crbp_d2.cli.benchmark_methods (also installed as ``crbp-benchmark-methods``).
"""

import sys

from crbp_d2.cli.benchmark_methods import main

if __name__ == "__main__":
    sys.exit(main())
