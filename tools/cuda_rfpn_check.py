#!/usr/bin/env python
"""R-FPN (Detectron2) check for a CUDA machine (see --help).

The program is crbp_d2.cli.cuda_rfpn_check (also installed as ``crbp-cuda-rfpn-check``).
"""

import sys

from crbp_d2.cli.cuda_rfpn_check import main

if __name__ == "__main__":
    sys.exit(main())
