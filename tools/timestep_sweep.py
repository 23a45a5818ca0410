#!/usr/bin/env python
"""PQ of one R-FPN checkpoint as a function of the recurrent steps run at test time.

The program is crbp_d2.cli.timestep_sweep (also installed as ``crbp-timestep-sweep``).
"""

import sys

from crbp_d2.cli.timestep_sweep import main

if __name__ == "__main__":
    sys.exit(main())
