#!/usr/bin/env python
"""Copy result tables written by the benchmarks into README.md.

Every benchmark or analysis writes ``docs/results/NAME.json`` (records), a PNG and
``docs/results/NAME.md`` (its table and the machine it ran on). README.md marks where each table
goes with ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``; this script replaces the text
between the markers, so no number in the README is typed by hand.

  python tools/update_readme.py [--readme README.md] [--results docs/results] [--check]
"""

from __future__ import annotations

import argparse
import os
import re
import sys

MARKER = re.compile(
    r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S
)


def update(readme_text: str, results_dir: str) -> tuple[str, list[str]]:
    """Return the new README text and the names of the blocks whose table file is missing."""
    missing: list[str] = []

    def replace(match: re.Match) -> str:
        path = os.path.join(results_dir, match.group("name") + ".md")
        if not os.path.exists(path):
            missing.append(match.group("name"))
            return match.group(0)
        with open(path) as f:
            table = f.read().rstrip("\n") + "\n"
        return match.group(1) + table + match.group(4)

    return MARKER.sub(replace, readme_text), missing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--results", default=os.path.join("docs", "results"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    args = parser.parse_args(argv)
    with open(args.readme) as f:
        old = f.read()
    new, missing = update(old, args.results)
    for name in missing:
        print(
            f"warning: no {args.results}/{name}.md for the README block {name!r}", file=sys.stderr
        )
    if args.check:
        return int(new != old)
    if new != old:
        with open(args.readme + ".tmp", "w") as f:
            f.write(new)
        os.replace(args.readme + ".tmp", args.readme)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
