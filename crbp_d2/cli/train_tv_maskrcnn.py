"""Train a small torchvision Mask R-CNN on the synthetic shapes set from random init (CPU) and
report COCO mask / box AP with pycocotools: the recurrent mask head (hGRU, any engine method) or
its feedforward twin (torchvision's 4-conv head at the same width), on the same schedule.

No Detectron2 import: the set is read with pycocotools (generated on first use in a child
process). The schedule is the Detectron2 quick recipe's (configs/quick/Base-RFPN-R18-synthetic
.yaml): AdamW 5e-4, 100 warm-up steps, drops at 90% / 97%, gradient norm clipped at 5 (here over
all parameters at once), 2 images per step, horizontal flips.

    python tools/train_tv_maskrcnn.py --head recurrent --method crbp --iters 1750 \\
        --json docs/results/tv_maskrcnn_crbp.json
    # the README table from such records (no training):
    python tools/train_tv_maskrcnn.py --report docs/results/tv_maskrcnn_*.json \\
        --markdown docs/results/tv_maskrcnn.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Dict, List, Optional

from ._common import one_line_errors

PROG = "train_tv_maskrcnn"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--head", choices=("recurrent", "conv"), default="recurrent")
    parser.add_argument("--cell", choices=("hgru", "convlstm"), default="hgru")
    parser.add_argument("--method", default="crbp", help="engine method (recurrent head)")
    parser.add_argument("--steps", type=int, default=6, help="N, recurrent steps in training")
    parser.add_argument("--neumann-steps", type=int, default=5)
    parser.add_argument("--lcp-weight", type=float, default=1e-3)
    parser.add_argument(
        "--eval-steps",
        type=int,
        nargs="*",
        default=None,
        help="test steps to evaluate the recurrent head at (default: N)",
    )
    parser.add_argument("--width", type=int, default=64, help="FPN / mask-head channels")
    parser.add_argument("--iters", type=int, default=1750)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-root",
        default=None,
        help="the shapes set (default: $DETECTRON2_DATASETS or ./datasets, "
        "/synthetic_panoptic_large; generated on first use)",
    )
    parser.add_argument("--max-val", type=int, default=0, help="evaluate on the first N (0: all)")
    parser.add_argument("--json", default=None, help="write the record here")
    parser.add_argument("--checkpoint", default=None, help="save the trained weights here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--shared-machine",
        action="store_true",
        help="flag the record's timings as taken on a machine shared with other jobs",
    )
    parser.add_argument("--log-period", type=int, default=50)
    parser.add_argument(
        "--report",
        nargs="+",
        default=None,
        metavar="RECORD",
        help="no training: write the Markdown table of these records to --markdown, and the "
        "records as one list beside it (OUT.json)",
    )
    parser.add_argument("--markdown", default=None, help="where --report writes its table")
    args = parser.parse_args(argv)
    if args.report and not args.markdown:
        parser.error("--report needs --markdown OUT.md")
    for name in ("iters", "batch", "steps", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def lr_factor(iteration: int, iters: int, warmup: int) -> float:
    """Linear warm-up from 0.01, then x0.1 at 90% and x0.01 at 97% of ``iters``."""
    factor = 1.0
    if iteration < warmup:
        factor = 0.01 + 0.99 * iteration / warmup
    if iteration >= int(0.9 * iters):
        factor *= 0.1
    if iteration >= int(0.97 * iters):
        factor *= 0.1
    return factor


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    with one_line_errors(PROG):
        if args.report:
            return _report(args.report, args.markdown)
        return _run(args)


def results_table(records: List[dict]) -> str:
    """Markdown: one row per record and evaluated test-step count, then the machine line."""
    from ..utils import markdown_table

    rows = []
    for rec in records:
        engine = rec["engine"]
        head = (
            f"recurrent {engine['cell']}, {engine['method']}, N = {engine['steps']}"
            if engine
            else "feedforward: 4 convs (torchvision)"
        )
        sched = rec["schedule"]
        for ev in rec["evaluations"]:
            rows.append(
                [
                    head,
                    ev["test_steps"] or "",
                    f"{rec['mask_head_params']:,}",
                    f"{sched['iters']} x {sched['batch']}",
                    f"{ev['segm_AP']:.1f}",
                    f"{ev['segm_AP50']:.1f}",
                    f"{ev['bbox_AP']:.1f}",
                    f"{rec['seconds_per_iter']:.2f}",
                    f"{rec['train_seconds'] / 60:.1f}",
                ]
            )
    table = markdown_table(
        [
            "mask head",
            "test steps",
            "mask-head params",
            "steps x images",
            "mask AP",
            "mask AP50",
            "box AP",
            "s / step",
            "training (min)",
        ],
        rows,
    )
    machines = sorted(
        {
            f"{r['machine']['device']}, torch {r['machine']['torch']}, "
            f"{r['machine']['threads']} thread(s)"
            for r in records
        }
    )
    shared = any(r.get("shared_machine") for r in records)
    first = records[0]
    note = (
        f"Measured on {'; '.join(machines)}"
        + (" (a machine shared with other jobs: the timings are not clean)" if shared else "")
        + f": torchvision Mask R-CNN, ResNet-18-FPN ({first['schedule']['width']} channels) from "
        f"random init, trained on images drawn from the {first['data']['train_images']} of the "
        f"synthetic shapes set, one seed ({first['schedule']['seed']}), mask / box AP "
        f"(pycocotools) on {first['data']['val_images']} validation images "
        "(`tools/train_tv_maskrcnn.py`; records `docs/results/tv_maskrcnn_*.json`)."
    )
    return table + "\n\n" + note + "\n"


def _report(paths: List[str], markdown: str) -> int:
    import json

    from ..utils import atomic_write_json, atomic_write_text

    records = []
    for path in paths:
        with open(path) as f:
            records.append(json.load(f))
    atomic_write_text(markdown, results_table(records))
    # the README block's record: every run's record in one list beside the table
    atomic_write_json(records, os.path.splitext(markdown)[0] + ".json")
    return 0


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..tv.data import CocoInstances, collate, ensure_shapes_dataset, shapes_paths
    from ..tv.evaluate import coco_ap
    from ..tv.models import small_maskrcnn
    from ..utils import atomic_torch_save, atomic_write_json, machine_record

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    root = args.data_root or os.path.join(
        os.environ.get("DETECTRON2_DATASETS", "datasets"), "synthetic_panoptic_large"
    )
    ensure_shapes_dataset(root)
    train_set = CocoInstances(*shapes_paths(root, "train"), hflip=True)
    val_set = CocoInstances(*shapes_paths(root, "val"))
    if args.max_val:
        val_set.image_ids = val_set.image_ids[: args.max_val]

    torch.manual_seed(args.seed)
    engine_settings = {}
    if args.head == "recurrent":
        engine_settings = dict(
            cell=args.cell,
            steps=args.steps,
            method=args.method,
            neumann_steps=args.neumann_steps,
            lcp_weight=args.lcp_weight,
        )
    model = small_maskrcnn(
        train_set.num_classes, head=args.head, width=args.width, **engine_settings
    )
    mask_modules = [model.roi_heads.mask_head, model.roi_heads.mask_predictor]
    mask_params = sum(p.numel() for m in mask_modules for p in m.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, args.iters, args.warmup)
    )
    order = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.batch,
        sampler=torch.utils.data.RandomSampler(
            train_set, replacement=True, num_samples=args.iters * args.batch, generator=order
        ),
        collate_fn=collate,
        num_workers=0,
    )
    log: List[Dict[str, float]] = []
    running: Dict[str, float] = {}
    model.train()
    start = time.perf_counter()
    for iteration, (images, targets) in enumerate(loader):
        losses = model(images, targets)
        total = sum(losses.values())
        if not math.isfinite(float(total.detach())):
            print(
                f"{PROG}: non-finite loss at iteration {iteration}: "
                f"{ {k: float(v) for k, v in losses.items()} }",
                file=sys.stderr,
            )
            return 1
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        optimizer.step()
        schedule.step()
        for key, value in losses.items():
            running[key] = running.get(key, 0.0) + float(value.detach())
        if (iteration + 1) % args.log_period == 0 or iteration + 1 == args.iters:
            count = (
                args.log_period
                if (iteration + 1) % args.log_period == 0
                else ((iteration + 1) % args.log_period)
            )
            entry = {"iteration": iteration + 1, **{k: v / count for k, v in running.items()}}
            entry["seconds"] = time.perf_counter() - start
            log.append(entry)
            running = {}
            print(
                f"[{PROG}] iter {iteration + 1}/{args.iters} "
                + " ".join(f"{k} {v:.4f}" for k, v in entry.items() if k.startswith("loss"))
                + f" ({entry['seconds']:.0f} s)",
                flush=True,
            )
    train_seconds = time.perf_counter() - start
    if args.checkpoint:
        atomic_torch_save(model.state_dict(), args.checkpoint)

    evaluations = []
    eval_steps = [None]
    if args.head == "recurrent":
        eval_steps = args.eval_steps or [args.steps]
    for steps in eval_steps:
        if steps is not None:
            model.roi_heads.mask_head.engine.test_steps = steps
        began = time.perf_counter()
        scores = coco_ap(model, val_set)
        evaluations.append({"test_steps": steps, **scores, "seconds": time.perf_counter() - began})
        print(
            f"[{PROG}] eval"
            + (f" at {steps} steps" if steps else "")
            + ": "
            + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()),
            flush=True,
        )

    record = {
        "what": "torchvision Mask R-CNN (ResNet-18-FPN, random init) on the synthetic shapes set",
        "head": args.head,
        "engine": engine_settings or None,
        "mask_head_params": mask_params,
        "schedule": {
            "iters": args.iters,
            "batch": args.batch,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup": args.warmup,
            "clip": args.clip,
            "seed": args.seed,
            "width": args.width,
        },
        "data": {
            "root": os.path.basename(os.path.normpath(root)),
            "train_images": len(train_set),
            "val_images": len(val_set),
        },
        "train_seconds": train_seconds,
        "seconds_per_iter": train_seconds / args.iters,
        "evaluations": evaluations,
        "log": log,
        "machine": machine_record("cpu"),
        "shared_machine": bool(args.shared_machine),
        "command": "python tools/train_tv_maskrcnn.py " + " ".join(args.argv),
    }
    if args.json:
        atomic_write_json(record, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
