#!/usr/bin/env python
"""State space of hidden-state trajectories (paper Fig. 1b/1c): PCA over t = 1..T, densities
before/after N, per-image distance between the states at t = N and t = T, KS tests between models.

    python tools/pathfinder_state_space.py --checkpoints bptt=.../best.pth crbp=.../best.pth \
        --max-steps 40 --images 64 --out docs/results/pathfinder_state_space \
        [--compare-step crbp=30]

Writes <out>.json (per model: distance mean/SD, explained variance; KS statistic and p-value for
every pair), <out>.csv (per-image distances) and <out>.png.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from crbp_d2.pathfinder.analysis import (  # noqa: E402
    analysis_argument_parser,
    apply_threads,
    hidden_trajectories,
    load_trained,
    make_test_loader,
    parse_named_paths,
    plot_state_space,
    state_space,
    write_records,
)
from crbp_d2.pathfinder.models import RecurrentSegmenter  # noqa: E402
from crbp_d2.pathfinder.trainer import atomic_write_json  # noqa: E402


def main(argv=None) -> int:
    p = analysis_argument_parser(__doc__)
    p.add_argument("--max-steps", type=int, default=40, help="T")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--pool", type=int, default=8, help="states are average-pooled to P x P")
    p.add_argument("--components", type=int, default=2, help="PCA dimensions of the distance")
    p.add_argument(
        "--compare-step",
        nargs="*",
        default=[],
        help="NAME=STEP: compare h_STEP with h_T instead of h_N (the authors: C-RBP 30)",
    )
    p.add_argument("--test-length", type=int, default=None)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    trajectories, train_steps = {}, {}
    try:
        compare = {k: int(v) for k, v in (s.split("=") for s in args.compare_step)}
        for name, path in parse_named_paths(args.checkpoints).items():
            model, cfg = load_trained(path, args.device)
            if not isinstance(model, RecurrentSegmenter):
                raise ValueError(f"{name}: the state space needs a recurrent model")
            loader = make_test_loader(
                cfg, args.test_length, max(args.images, args.batch_size), args.batch_size
            )
            trajectories[name] = hidden_trajectories(
                model, loader, args.max_steps, args.pool, args.images, args.device
            )
            train_steps[name] = min(cfg.MODEL.RECURRENT.TIMESTEPS, args.max_steps)
        result = state_space(trajectories, train_steps, args.components, compare)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {
        "models": {},
        "ks": result["ks"],
        "pool": args.pool,
        "components": args.components,
        "images": args.images,
        "max_steps": args.max_steps,
    }
    rows = []
    for name, m in result["models"].items():
        summary["models"][name] = {
            "compare_step": m["compare_step"],
            "final_step": m["final_step"],
            "explained_variance": m["explained_variance"],
            "pca_distance_mean": float(np.mean(m["pca_distance"])),
            "pca_distance_sd": float(np.std(m["pca_distance"])),
            "raw_distance_mean": float(np.mean(m["raw_distance"])),
            "raw_distance_sd": float(np.std(m["raw_distance"])),
        }
        for i, (d, r) in enumerate(zip(m["pca_distance"], m["raw_distance"])):
            rows.append(
                {"model": name, "image": i, "pca_distance": float(d), "raw_distance": float(r)}
            )
        s = summary["models"][name]
        print(
            f"{name}: distance(h_{m['compare_step']}, h_{m['final_step']}) PCA mean "
            f"{s['pca_distance_mean']:.4g} (SD {s['pca_distance_sd']:.3g}), "
            f"raw {s['raw_distance_mean']:.4g}"
        )
    for k in result["ks"]:
        print(
            f"KS {k['model_a']} vs {k['model_b']} ({k['distance']}): "
            f"D={k['statistic']:.3f} p={k['p_value']:.3g}"
        )
    atomic_write_json(summary, args.out + ".json")
    write_records(rows, args.out + "_distances")
    plot_state_space(result, args.out + ".png")
    print(f"wrote {args.out}.json, {args.out}_distances.csv, {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
