#!/usr/bin/env python
"""Generate a Pathfinder segmentation dataset, resumably (see --help)."""

import sys

from crbp_d2.cli.generate_pathfinder import main

if __name__ == "__main__":
    sys.exit(main())
