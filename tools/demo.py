#!/usr/bin/env python
"""Panoptic predictions of a Panoptic FPN / R-FPN checkpoint on images, with ``--timecourse`` the
instance masks after every recurrent step.

The program is crbp_d2.cli.demo (also installed as ``crbp-demo``).
"""

import sys

from crbp_d2.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
