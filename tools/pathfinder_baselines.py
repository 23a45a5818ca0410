#!/usr/bin/env python
"""Non-learned Pathfinder baselines: marker only and morphological flood fill (IoU at 150 px).

    python tools/pathfinder_baselines.py --length 14 --num 1000 --seed 1 [--size 150]
        [--data DIR --split test] [--radii 1 2 3 4] [--json OUT.json] [--stats]

Without ``--data`` the samples are generated on the fly (samples 0..num-1 of ``--seed``); with
``--data`` they are read from a dataset written by tools/generate_pathfinder.py (or the authors'
PNGs with ``--list``). Images go through the paper's transform (bicubic to ``--size``, label > 0.2,
no flip). ``--stats`` also prints the generator's path statistics (on-the-fly only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crbp_d2.contours.generator import GenerationError, preset  # noqa: E402
from crbp_d2.pathfinder.baselines import dataset_pairs, evaluate_baselines  # noqa: E402
from crbp_d2.pathfinder.data import (  # noqa: E402
    PathfinderOnTheFly,
    PathfinderStored,
    PathfinderTransform,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=14)
    parser.add_argument("--num", type=int, default=1000, help="images to score")
    parser.add_argument(
        "--seed", type=int, default=1, help="on-the-fly seed (default 1: not the train seed 0)"
    )
    parser.add_argument("--size", type=int, default=150, help="evaluation resolution (paper: 150)")
    parser.add_argument(
        "--data", default=None, help="dataset directory (generate_pathfinder.py --out)"
    )
    parser.add_argument("--split", default="test", choices=("train", "test", "all"))
    parser.add_argument(
        "--list", default=None, help="authors' 'path label' list, relative to --data"
    )
    parser.add_argument(
        "--radii", type=int, nargs="+", default=[1, 2, 3, 4], help="flood-fill radii (px)"
    )
    parser.add_argument("--ink-threshold", type=float, default=0.2)
    parser.add_argument("--legacy-quirks", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--stats", action="store_true", help="print generator path statistics too")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num must be >= 1, got {args.num}")
    if any(r < 0 for r in args.radii):
        parser.error(f"--radii must be >= 0, got {args.radii}")
    try:
        params = preset(args.length, legacy_quirks=args.legacy_quirks)
        transform = PathfinderTransform(args.size, flip=False)
        if args.data is None:
            dataset = PathfinderOnTheFly(params, args.num, args.seed, transform)
            source = f"on the fly, PF{args.length}, seed {args.seed}"
        else:
            dataset = PathfinderStored(
                args.data, args.split, args.length, transform, list_file=args.list
            )
            source = f"{args.data} ({args.split})"
        marker_radius = params.marker_radius * args.size / params.canvas_size
        results = evaluate_baselines(
            dataset_pairs(dataset, args.num), marker_radius, args.radii, args.ink_threshold
        )
    except (ValueError, FileNotFoundError, GenerationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Baselines on {results['marker_only']['n']} images ({source}) at {args.size} px")
    print("| baseline | mean per-image IoU | paper IoU (pooled F1 -> F1/(2-F1)) |")
    print("|---|---|---|")
    for name, score in results.items():
        print(f"| {name} | {score['mean_iou']:.3f} | {score['paper_iou']:.3f} |")
    output = {"source": source, "size": args.size, "length": args.length, "results": results}
    if args.stats:
        if args.data is not None:
            parser.error("--stats needs on-the-fly data (no --data)")
        from crbp_d2.contours.stats import path_statistics

        output["path_statistics"] = path_statistics(params, args.seed, min(args.num, 500))
        for key, value in output["path_statistics"].items():
            print(f"{key}: {value:.4g}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(output, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
