#!/usr/bin/env python
"""Train the recurrent (or feedforward) mask head in torchvision's Mask R-CNN (see --help)."""

import sys

from crbp_d2.cli.train_tv_maskrcnn import main

if __name__ == "__main__":
    sys.exit(main())
