#!/usr/bin/env python
"""Benchmark the Pathfinder generator's speed (see --help)."""

import sys

from crbp_d2.cli.benchmark_generator import main

if __name__ == "__main__":
    sys.exit(main())
