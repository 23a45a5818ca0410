#!/usr/bin/env python
"""The segmentation of one Pathfinder test image step by step (see --help)."""

import sys

from crbp_d2.cli.pathfinder_timecourse import main

if __name__ == "__main__":
    sys.exit(main())
