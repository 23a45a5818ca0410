#!/usr/bin/env python
"""The R-FPN CPU protocol: feedforward vs recurrent mask heads on the embedded data.

The program is crbp_d2.cli.rfpn_cpu_protocol (also installed as ``crbp-rfpn-cpu-protocol``).
"""

import sys

from crbp_d2.cli.rfpn_cpu_protocol import main

if __name__ == "__main__":
    sys.exit(main())
