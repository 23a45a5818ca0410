#!/usr/bin/env python
"""Convert a Pathfinder checkpoint written before the RNG-state change (see --help)."""

import sys

from crbp_d2.cli.migrate_pathfinder_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
