#!/usr/bin/env python
"""The Pathfinder CPU protocol: C-RBP, BPTT and RBP on 2 CPU cores (see --help)."""

import sys

from crbp_d2.cli.pathfinder_cpu_protocol import main

if __name__ == "__main__":
    sys.exit(main())
