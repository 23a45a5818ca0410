#!/usr/bin/env python
"""Pathfinder generalization matrix across contour lengths (see --help)."""

import sys

from crbp_d2.cli.pathfinder_generalization import main

if __name__ == "__main__":
    sys.exit(main())
