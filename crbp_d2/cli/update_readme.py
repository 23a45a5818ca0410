"""Copy result tables written by the benchmarks into README.md.

Every benchmark or analysis writes ``docs/results/NAME.json`` (records), a PNG and
``docs/results/NAME.md`` (its table and the machine it ran on). README.md marks where each table
goes with ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``; this program replaces the text
between the markers (:func:`crbp_d2.utils.report.update_readme_blocks`), so no number in the
README is typed by hand.

  python tools/update_readme.py [--readme README.md] [--results docs/results] [--check]

``--check`` also runs :func:`crbp_d2.utils.records.check_results` (tables rendered from their
records, provenance fields, no absolute paths, the tracked numbers outside the blocks); it is part
of ``make test`` (``tests/test_readme_records.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ..utils import atomic_write_text, update_readme_blocks


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--results", default=os.path.join("docs", "results"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """0 when done (or, with ``--check``, when the README is up to date), else 1."""
    args = parse_args(argv)
    with open(args.readme) as f:
        old = f.read()
    new, missing = update_readme_blocks(old, args.results)
    for name in missing:
        print(
            f"warning: no {args.results}/{name}.md for the README block {name!r}", file=sys.stderr
        )
    if args.check:
        from ..utils.records import check_results

        problems = check_results(args.readme, args.results)
        for problem in problems:
            print(problem, file=sys.stderr)
        return int(new != old or bool(problems))
    if new != old:
        atomic_write_text(args.readme, new)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
