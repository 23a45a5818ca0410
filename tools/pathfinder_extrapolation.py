#!/usr/bin/env python
"""Pathfinder extrapolation: trained on PF9, tested on longer contours (see --help)."""

import sys

from crbp_d2.cli.pathfinder_extrapolation import main

if __name__ == "__main__":
    sys.exit(main())
