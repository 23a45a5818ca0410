#!/usr/bin/env python
"""Non-learned Pathfinder baselines: marker only and flood fill (see --help)."""

import sys

from crbp_d2.cli.pathfinder_baselines import main

if __name__ == "__main__":
    sys.exit(main())
