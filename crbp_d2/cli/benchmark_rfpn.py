"""Train-step time and peak memory of Panoptic FPN vs R-FPN trained with BPTT or C-RBP.

Every variant is the full Panoptic FPN model of ``--config-file`` (default the paper's R-FPN R-50)
with only the mask head changed: ``FPN`` (the 4-conv head), ``BPTT-n``, ``CRBP-n`` (also
``RBP-n``, ``CBPTT-n``, ``TBPTT-n``), each in its own process; see
:mod:`crbp_d2.rfpn.experiments.benchmark` for what is measured.

Example::

    python tools/benchmark_rfpn.py --size 256 --iters 3 \\
        --json docs/results/rfpn_benchmark.json --plot docs/results/rfpn_benchmark.png
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..rfpn.experiments.benchmark import (
    DEFAULT_CONFIG,
    DEFAULT_VARIANTS,
    RFPNBenchmark,
    parse_variant,
    run_rfpn_benchmark,
    table,
    write_rfpn_results,
)
from ._common import one_line_errors


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--instances", type=int, default=8, help="ground-truth instances per image")
    parser.add_argument("--iters", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the records here (and a .md table)")
    parser.add_argument("--plot", default=None, help="write a bar plot here (PNG)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    for variant in args.variants:
        try:
            parse_variant(variant)
        except ValueError as error:
            parser.error(str(error))
    if args.size < 32 or args.batch < 1 or args.iters < 1 or args.instances < 1:
        parser.error("--size >= 32, --batch >= 1, --iters >= 1 and --instances >= 1 are required")
    if args.json and not args.json.endswith(".json"):
        parser.error(f"--json must end in .json (the table goes beside it), got {args.json}")
    return args


def _print_progress(record: dict) -> None:
    print(
        f"{record['variant']}: {record['seconds_per_iter']:.2f} s/iter, "
        f"{record['peak_bytes'] / 2**20:,.0f} MiB",
        flush=True,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    settings = RFPNBenchmark(
        config_file=args.config_file,
        size=args.size,
        batch=args.batch,
        instances=args.instances,
        iters=args.iters,
        device=args.device,
        threads=args.threads,
        opts=tuple(args.opts),
    )
    with one_line_errors("benchmark_rfpn.py", (FileNotFoundError, RuntimeError)):
        records = run_rfpn_benchmark(settings, args.variants, on_record=_print_progress)
    first = records[0]
    print(
        f"\n{first['device']}, {args.size} px, batch {args.batch}, torch threads "
        f"{first['threads']}\n" + table(records)
    )
    for path in write_rfpn_results(records, args.json, args.plot).values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
