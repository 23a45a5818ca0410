#!/usr/bin/env python
"""Is a resumed Detectron2 run the uninterrupted one on this device?

The program is crbp_d2.cli.rfpn_resume_check (also installed as ``crbp-rfpn-resume-check``).
"""

import sys

from crbp_d2.cli.rfpn_resume_check import main

if __name__ == "__main__":
    sys.exit(main())
