#!/usr/bin/env python
"""Train and evaluate Panoptic FPN / R-FPN (the C-RBP recurrent mask head) with Detectron2.

The program is crbp_d2.cli.train_net (also installed as ``crbp-train-net``); the trainer is
crbp_d2.rfpn.train.trainer.Trainer.
"""

import sys

from crbp_d2.cli.train_net import main

if __name__ == "__main__":
    sys.exit(main())
