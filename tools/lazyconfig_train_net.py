#!/usr/bin/env python
"""Train and evaluate Panoptic FPN / R-FPN from a LazyConfig file (configs/lazy/*.py).

The program is crbp_d2.cli.lazyconfig_train_net (also installed as
``crbp-lazyconfig-train-net``); the training loop is crbp_d2.rfpn.train.trainer_lazy.
"""

import sys

from crbp_d2.cli.lazyconfig_train_net import main

if __name__ == "__main__":
    sys.exit(main())
