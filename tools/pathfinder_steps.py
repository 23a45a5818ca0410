#!/usr/bin/env python
"""IoU vs inference steps t = 0..T for recurrent models (BPTT degrades after its N, C-RBP holds).

    python tools/pathfinder_steps.py --checkpoints bptt=output/pathfinder/pf14_bptt6/best.pth \
        crbp=output/pathfinder/pf14_crbp20/best.pth --max-steps 40 \
        --out docs/results/pathfinder_steps \
        [--test-length 14] [--test-size 1000]

Writes <out>.csv/.json (one row per model and step) and <out>.png.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from crbp_d2.pathfinder.analysis import (  # noqa: E402
    analysis_argument_parser,
    apply_threads,
    iou_over_steps,
    load_trained,
    make_test_loader,
    parse_named_paths,
    plot_iou_over_steps,
    write_records,
)


def main(argv=None) -> int:
    p = analysis_argument_parser(__doc__)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument(
        "--test-length", type=int, default=None, help="default: each model's test length"
    )
    p.add_argument("--test-size", type=int, default=None)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    records, curves, train_steps = [], {}, {}
    try:
        for name, path in parse_named_paths(args.checkpoints).items():
            model, cfg = load_trained(path, args.device)
            loader = make_test_loader(cfg, args.test_length, args.test_size, args.batch_size)
            rows = iou_over_steps(model, loader, args.max_steps, args.device)
            curves[name] = rows
            train_steps[name] = cfg.MODEL.RECURRENT.TIMESTEPS
            for r in rows:
                records.append(
                    dict(
                        r,
                        model=name,
                        method=cfg.MODEL.RECURRENT.METHOD,
                        train_steps=cfg.MODEL.RECURRENT.TIMESTEPS,
                        train_length=cfg.DATA.TRAIN_LENGTH,
                        test_length=args.test_length or cfg.DATA.TEST_LENGTH,
                    )
                )
            n = cfg.MODEL.RECURRENT.TIMESTEPS
            print(
                f"{name}: IoU@N={n} {rows[min(n, args.max_steps)]['iou']:.4f}, "
                f"best {max(r['iou'] for r in rows):.4f}, "
                f"IoU@{args.max_steps} {rows[-1]['iou']:.4f}"
            )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_records(records, args.out)
    plot_iou_over_steps(curves, train_steps, args.out + ".png")
    print(f"wrote {args.out}.csv/.json/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
