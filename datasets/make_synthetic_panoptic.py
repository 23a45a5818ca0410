#!/usr/bin/env python
"""Write a synthetic COCO-panoptic dataset: the "shapes" scene or the "contours" scene.

Not needed for normal use: the first ``DatasetCatalog.get("synthetic_panoptic_*_separated")``
(or ``synthetic_contours_*``) generates the registered sets. Use this to pick another size, seed
or location, or to draw a contact sheet, e.g.

    python datasets/make_synthetic_panoptic.py --num-train 256 --num-val 32 --size 192 --force
    python datasets/make_synthetic_panoptic.py --scene contours --out /tmp/contours \
        --num-train 8 --num-val 8 --contact-sheet docs/synthetic_contours.png
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from crbp_d2.scenes.contours import CONTOURS_SCENE
from crbp_d2.scenes.shapes import SHAPES_SCENE
from crbp_d2.scenes.writer import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    contact_sheet,
    datasets_root,
    make_synthetic_dataset,
)

SCENES = {
    "shapes": (SHAPES_SCENE, "synthetic_panoptic"),
    "contours": (CONTOURS_SCENE, "synthetic_contours"),
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scene", choices=sorted(SCENES), default="shapes", help="what to draw")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default: {datasets_root()}/synthetic_panoptic or "
        "synthetic_contours, from $DETECTRON2_DATASETS)",
    )
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="train images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="val images")
    parser.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE, help="image side (px)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="a scene parameter, e.g. --set contour_length=9 (contours: "
        + ", ".join(sorted(CONTOURS_SCENE.defaults))
        + ")",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes rendering the images (default: one per CPU core, at most 8; the output "
        "does not depend on it)",
    )
    parser.add_argument(
        "--contact-sheet", type=Path, help="also write a PNG of the first val images and segments"
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    scene, folder = SCENES[args.scene]
    try:
        params = {}
        for item in args.set:
            name, _, value = item.partition("=")
            if not value.lstrip("-").isdigit():
                raise ValueError(f"--set {item!r}: expected NAME=INTEGER")
            params[name] = int(value)
        root = make_synthetic_dataset(
            scene,
            args.out if args.out is not None else datasets_root() / folder,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.size,
            seed=args.seed,
            overwrite=args.force,
            workers=args.workers,
            **params,
        )
    except (ValueError, TypeError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {args.num_train} train and {args.num_val} val {args.scene} images to {root}")
    if args.contact_sheet:
        args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(root, "val", count=min(args.num_val, 8)).save(args.contact_sheet)
        print(f"Wrote {args.contact_sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
