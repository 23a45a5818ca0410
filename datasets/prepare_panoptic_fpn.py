#!/usr/bin/env python
"""Build the "separated" semantic PNGs Panoptic FPN trains on from COCO panoptic annotations.

For each split, reads ``coco/annotations/panoptic_<split>.json`` and ``coco/panoptic_<split>/``
and writes ``coco/panoptic_stuff_<split>/``: stuff categories become labels 1..53 (in category-id
order), all thing categories become 0 and unlabelled pixels 255 -- the format of Detectron2's
``coco_2017_{train,val}_panoptic_separated`` datasets. ``coco`` is ``$DETECTRON2_DATASETS/coco``
(default ``./datasets/coco``, as Detectron2 finds it).

    python datasets/prepare_panoptic_fpn.py [--root DIR] [--splits val2017 train2017] [--workers N]
"""

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from crbp_d2.scenes.panoptic import write_separated_semantic
from crbp_d2.scenes.writer import datasets_root


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"the COCO folder (default: {datasets_root() / 'coco'})",
    )
    parser.add_argument("--splits", nargs="+", default=["val2017", "train2017"])
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)"
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    root = args.root if args.root is not None else datasets_root() / "coco"
    jobs = []
    for split in args.splits:
        panoptic_json = root / "annotations" / f"panoptic_{split}.json"
        panoptic_root = root / f"panoptic_{split}"
        for path in (panoptic_json, panoptic_root):
            if not path.exists():
                others = [s for s in args.splits if s != split]
                hint = f"; to prepare only the splits you have, e.g. --splits {' '.join(others)}"
                print(
                    f"prepare_panoptic_fpn.py: error: {path} not found (split {split})"
                    + (hint if others else "")
                    + "; see datasets/README.md for the COCO layout",
                    file=sys.stderr,
                )
                return 2
        jobs.append((split, panoptic_json, panoptic_root, root / f"panoptic_stuff_{split}"))
    for split, panoptic_json, panoptic_root, sem_seg_root in jobs:
        start = time.perf_counter()
        count = write_separated_semantic(
            panoptic_json, panoptic_root, sem_seg_root, num_workers=args.workers
        )
        print(
            f"{split}: wrote {count} PNGs to {sem_seg_root} in {time.perf_counter() - start:.1f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
