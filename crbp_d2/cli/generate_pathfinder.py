"""Generate a Pathfinder segmentation dataset (C-RBP PF-N), resumably.

    python tools/generate_pathfinder.py --length 14 --num 200000 --seed 0 --out DIR \
        [--workers W] [--format png|npy] [--store-size 150] [--preview]

Writes DIR/curv_contour_length_N/ (see crbp_d2/pathfinder/data/storage.py for the layouts). A
re-run with the same arguments checks the finished shards against their recorded sizes and
SHA-256 (--verify size: sizes only), rewrites any that is truncated or changed, skips the intact
ones and redoes an interrupted one. Killing the program (even kill -9) ends its workers too.
``--preview`` also writes DIR/curv_contour_length_N/preview.png (samples 0-15, labels in red);
with ``--num 0`` it writes only the preview.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from crbp_d2.contours.generator import DISTRACTOR_RULES, GenerationError, PathfinderParams, preset
from crbp_d2.pathfinder.data.storage import (
    FORMATS,
    VERIFY_LEVELS,
    dataset_dir,
    generate_dataset,
    write_preview,
)

from ._common import report_input_error


def _parse_override(text: str):
    """``KEY=VALUE`` of a ``PathfinderParams`` field -> (key, value of the field's type)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    fields = {f.name: f for f in dataclasses.fields(PathfinderParams)}
    if key not in fields:
        raise argparse.ArgumentTypeError(
            f"unknown parameter {key!r}; known: {', '.join(sorted(fields))}"
        )
    default = fields[key].default
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            parsed = value.lower() in ("true", "1")
        elif value.lower() == "none":
            parsed = None
        elif isinstance(default, int) or default is None:
            parsed = int(value)
        else:
            parsed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad value for {key}: {value!r}") from None
    return key, parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--length", type=int, default=14, help="contour length in dashes (6, 9, 14, 20, 25)"
    )
    parser.add_argument(
        "--num", type=int, default=200_000, help="number of samples (default 200000)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="dataset seed (sample i uses (seed, i))"
    )
    parser.add_argument(
        "--out", required=True, help="output directory (gets curv_contour_length_N/)"
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument(
        "--format", choices=FORMATS, default="png", help="png (authors' layout) or npy"
    )
    parser.add_argument(
        "--store-size",
        type=int,
        default=None,
        help="npy only: store images resized to this side (e.g. 150)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per resumable shard")
    parser.add_argument(
        "--batch-size", type=int, default=25_000, help="png samples per imgs/<batch>/ folder"
    )
    parser.add_argument(
        "--num-test", type=int, default=None, help="test split size (default min(10000, num // 20))"
    )
    parser.add_argument(
        "--distractor-rule",
        choices=DISTRACTOR_RULES,
        default="committed",
        help="committed: 15 distractors; ratio: 30 // (length // 3)",
    )
    parser.add_argument(
        "--legacy-quirks", action="store_true", help="reproduce the original's three contact bugs"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="override any PathfinderParams field (repeatable)",
    )
    parser.add_argument(
        "--preview", action="store_true", help="also write preview.png (16 samples)"
    )
    parser.add_argument(
        "--verify",
        choices=VERIFY_LEVELS,
        default="checksum",
        help="how a re-run checks finished shards: checksum (size and SHA-256, default) or size",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per generation worker
    args = build_parser().parse_args(argv)
    try:
        overrides = dict(args.overrides)
        if args.legacy_quirks:
            overrides["legacy_quirks"] = True
        params = preset(args.length, distractor_rule=args.distractor_rule, **overrides)
        if args.num < 0:
            raise ValueError(f"--num must be >= 0, got {args.num}")
        if args.num == 0 and not args.preview:
            raise ValueError("--num 0 only makes sense with --preview")
        if args.num > 0:
            root = generate_dataset(
                args.out,
                params,
                args.num,
                seed=args.seed,
                fmt=args.format,
                workers=args.workers,
                shard_size=args.shard_size,
                batch_size=args.batch_size,
                store_size=args.store_size,
                num_test=args.num_test,
                progress=not args.no_progress,
                verify=args.verify,
            )
            print(f"dataset: {root}")
        if args.preview:
            path = write_preview(
                dataset_dir(args.out, params.contour_length) / "preview.png", params, seed=args.seed
            )
            print(f"preview: {path}")
    except (ValueError, GenerationError) as error:
        return report_input_error("generate_pathfinder.py", error)
    except KeyboardInterrupt:
        print(
            "interrupted: finished shards are kept; re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
