#!/usr/bin/env python
"""Copy result tables written by the benchmarks (docs/results/NAME.md) into README.md's
``<!-- results:NAME -->`` blocks; ``--check`` exits 1 if the README is out of date.

The program is crbp_d2.cli.update_readme (also installed as ``crbp-update-readme``).
"""

import sys

from crbp_d2.cli.update_readme import main

if __name__ == "__main__":
    sys.exit(main())
