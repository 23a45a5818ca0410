#!/usr/bin/env python
"""The segmentation of one test image step by step (paper Fig. 1a).

    python tools/pathfinder_timecourse.py --checkpoint output/pathfinder/pf14_crbp20/best.pth \
        --max-steps 40 --index 0 --out docs/results/pathfinder_timecourse

The image is run inside a test batch (the hGRU's BatchNorm uses batch statistics). Writes
<out>.json (per-step IoU of that image) and <out>.png (probability maps, coloured timecourse).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from crbp_d2.pathfinder.analysis import (
    load_trained,
    make_test_loader,
    plot_timecourse,
    timecourse,
)  # noqa: E402
from crbp_d2.pathfinder.models import RecurrentSegmenter  # noqa: E402
from crbp_d2.pathfinder.trainer import atomic_write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output stem (no extension)")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--index", type=int, default=0, help="image index inside the first test batch")
    p.add_argument("--test-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        model, cfg = load_trained(args.checkpoint, args.device)
        if not isinstance(model, RecurrentSegmenter):
            raise ValueError("the timecourse needs a recurrent model (hgru or convlstm)")
        loader = make_test_loader(cfg, args.test_length, args.batch_size, args.batch_size)
        image, label = next(iter(loader))
        if not 0 <= args.index < image.shape[0]:
            raise ValueError(f"--index {args.index} outside the first batch of {image.shape[0]}")
        course = timecourse(
            model, image.to(args.device), label.to(args.device), args.max_steps, args.index
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    atomic_write_json(
        {
            "checkpoint": args.checkpoint,
            "index": args.index,
            "train_steps": cfg.MODEL.RECURRENT.TIMESTEPS,
            "iou_per_step": course["iou"],
        },
        args.out + ".json",
    )
    plot_timecourse(
        image[args.index, 0].numpy(), label[args.index].numpy(), course, args.out + ".png"
    )
    print(" ".join(f"t{t + 1}:{v:.2f}" for t, v in enumerate(course["iou"])))
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
