"""Deprecated: ``python -m crbp_d2.benchmarks.resume_determinism`` is now
``tools/rfpn_resume_check.py``; the experiment is :mod:`crbp_d2.rfpn.experiments.resume`."""

import sys

if __name__ == "__main__":
    from .._deprecated import run_moved_program

    sys.exit(run_moved_program(__spec__.name, "crbp_d2.cli.rfpn_resume_check"))
