#!/usr/bin/env python
"""Pathfinder IoU vs inference steps for recurrent models (see --help)."""

import sys

from crbp_d2.cli.pathfinder_steps import main

if __name__ == "__main__":
    sys.exit(main())
