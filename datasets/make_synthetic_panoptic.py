#!/usr/bin/env python
"""Write the synthetic COCO-panoptic dataset.

Not needed for normal use: the first ``DatasetCatalog.get("synthetic_panoptic_*_separated")``
generates it with the defaults. Use this to pick another size, seed or location, e.g.

    python datasets/make_synthetic_panoptic.py --num-train 256 --num-val 32 --size 192 --force
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from crbp_d2.data.synthetic_panoptic import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    default_synthetic_root,
    make_synthetic_panoptic,
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default: {default_synthetic_root()}, from $DETECTRON2_DATASETS)",
    )
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="train images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="val images")
    parser.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE, help="image side (px)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        root = make_synthetic_panoptic(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.size,
            seed=args.seed,
            overwrite=args.force,
        )
    except (ValueError, TypeError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {args.num_train} train and {args.num_val} val images to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
