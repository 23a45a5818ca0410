#!/usr/bin/env python
"""A fresh recurrent head fine-tuned on a trained FPN against R-FPN trained from scratch.

The program is crbp_d2.cli.rfpn_finetune (also installed as ``crbp-rfpn-finetune``).
"""

import sys

from crbp_d2.cli.rfpn_finetune import main

if __name__ == "__main__":
    sys.exit(main())
