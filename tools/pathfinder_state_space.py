#!/usr/bin/env python
"""Pathfinder state space of hidden-state trajectories (see --help)."""

import sys

from crbp_d2.cli.pathfinder_state_space import main

if __name__ == "__main__":
    sys.exit(main())
