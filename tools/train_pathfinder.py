#!/usr/bin/env python
"""Train or evaluate a Pathfinder model (see --help)."""

import sys

from crbp_d2.cli.train_pathfinder import main

if __name__ == "__main__":
    sys.exit(main())
