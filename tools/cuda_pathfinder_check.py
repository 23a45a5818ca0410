#!/usr/bin/env python
"""Full-size Pathfinder check for a CUDA machine (see --help)."""

import sys

from crbp_d2.cli.cuda_pathfinder_check import main

if __name__ == "__main__":
    sys.exit(main())
