#!/usr/bin/env python
"""Full-size Pathfinder check for a CUDA machine (< 10 minutes; no network needed).

1. Peak CUDA memory of one training step of the full-size PF14 hGRU (150 px, 25 channels,
   15x15, batch 32 on one device) for BPTT-6, C-BPTT-6, RBP-20 and C-RBP-20
   (paper Fig. 2a: BPTT-6 10.5 GB vs C-RBP 6 GB on a 12 GB Titan X).
2. Trains a full-size PF14 C-RBP-20 model on on-the-fly data for ``--train-minutes`` and
   evaluates it on held-out images.

    python tools/cuda_pathfinder_check.py --out output/cuda_check/pathfinder_cuda.json
    python tools/cuda_pathfinder_check.py --device cpu --tiny   # smoke test on a CPU

Uses only torch >= 2.1 APIs and this project's code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from crbp_d2.pathfinder.config import load_config  # noqa: E402
from crbp_d2.pathfinder.models import build_model, count_parameters  # noqa: E402
from crbp_d2.pathfinder.trainer import compute_loss, evaluate_model  # noqa: E402
from crbp_d2.pathfinder.training_data import build_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_RUNS = (("bptt", 6), ("cbptt", 6), ("rbp", 20), ("crbp", 20))


def config(method: str, steps: int, tiny: bool, extra=()):
    overrides = [
        "MODEL.RECURRENT.METHOD",
        method,
        "MODEL.RECURRENT.TIMESTEPS",
        steps,
        "DATA.SOURCE",
        "on_the_fly",
        "DATA.NUM_WORKERS",
        0 if tiny else 12,
    ]
    if tiny:
        overrides += [
            "MODEL.CHANNELS",
            6,
            "MODEL.KERNEL_SIZE",
            5,
            "DATA.IMAGE_SIZE",
            48,
            "SOLVER.BATCH_SIZE",
            4,
            "TEST.BATCH_SIZE",
            4,
        ]
    return load_config(
        os.path.join(ROOT, "configs", "pathfinder", "Base-PF.yaml"), overrides + list(extra)
    )


def peak_memory(method: str, steps: int, device: torch.device, batch, tiny: bool) -> dict:
    cfg = config(method, steps, tiny)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.SOLVER.LR)
    image, label = batch[0].to(device), batch[1].to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    tic = time.time()
    for _ in range(2):  # the second step includes Adam's state
        optimizer.zero_grad(set_to_none=True)
        total, _, _ = compute_loss(model, image, label, cfg)
        total.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.time() - tic) / 2
    result = {
        "method": method,
        "steps": steps,
        "batch": int(image.shape[0]),
        "seconds_per_step": seconds,
        "loss": float(total.detach()),
    }
    if device.type == "cuda":
        result["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
        result["model_and_batch_gb"] = base / 1e9
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def train_for(minutes: float, device: torch.device, tiny: bool, amp: bool) -> dict:
    cfg = config(
        "crbp",
        20,
        tiny,
        ["DATA.TRAIN_SIZE", 200000, "DATA.TEST_SIZE", 64 if tiny else 512, "SOLVER.AMP", amp],
    )
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.SOLVER.LR)
    train_set, test_set = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    loader = DataLoader(
        train_set,
        batch_size=cfg.SOLVER.BATCH_SIZE,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.DATA.NUM_WORKERS,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.DATA.NUM_WORKERS > 0,
    )
    amp_dtype = torch.bfloat16 if amp and device.type == "cuda" else None
    deadline = time.time() + 60 * minutes
    losses, iters, tic = [], 0, time.time()
    model.train()
    for image, label in loader:
        image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        if amp_dtype is not None:
            with torch.autocast("cuda", dtype=amp_dtype):
                total, _, out = compute_loss(model, image, label, cfg)
        else:
            total, _, out = compute_loss(model, image, label, cfg)
        if not torch.isfinite(total.detach()):
            raise RuntimeError(
                f"non-finite loss at iteration {iters + 1}: {out.diagnostics.scalars()}"
            )
        total.backward()
        optimizer.step()
        iters += 1
        if iters % 25 == 0:
            losses.append(
                {
                    "iteration": iters,
                    "loss": float(total.detach()),
                    **(out.diagnostics.scalars() if out.diagnostics else {}),
                }
            )
            print(
                f"  iter {iters}: loss {losses[-1]['loss']:.4f} "
                f"({(time.time() - tic) / iters:.3f} s/iter)",
                flush=True,
            )
        if time.time() > deadline:
            break
    train_seconds = time.time() - tic
    test_loader = DataLoader(
        test_set, batch_size=cfg.TEST.BATCH_SIZE, num_workers=cfg.DATA.NUM_WORKERS
    )
    results = evaluate_model(
        model, test_loader, device, (None, 60), cfg.SOLVER.LOSS, 2.0, 20, amp_dtype
    )
    return {
        "method": "crbp",
        "steps": 20,
        "iterations": iters,
        "images_seen": iters * cfg.SOLVER.BATCH_SIZE,
        "train_seconds": train_seconds,
        "seconds_per_iter": train_seconds / max(iters, 1),
        "loss_log": losses,
        "amp": amp,
        "parameters": count_parameters(model),
        "test": {str(k): v for k, v in results.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out", default=os.path.join(ROOT, "output", "cuda_check", "pathfinder_cuda.json")
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--train-minutes", type=float, default=5.0)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the training part")
    p.add_argument("--tiny", action="store_true", help="small shapes (smoke test)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: CUDA is not available (use --device cpu --tiny for a smoke test)",
            file=sys.stderr,
        )
        return 2
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "memory": [],
        "training": None,
    }
    if device.type == "cuda":
        report["total_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 1e9
    print(f"device: {report['device']}", flush=True)
    cfg = config("bptt", 6, args.tiny)
    dataset = build_dataset(cfg, "test", size=cfg.SOLVER.BATCH_SIZE)
    batch = next(iter(DataLoader(dataset, batch_size=cfg.SOLVER.BATCH_SIZE)))
    for method, steps in MEMORY_RUNS:
        result = peak_memory(method, steps, device, batch, args.tiny)
        report["memory"].append(result)
        print(
            f"{method}-{steps}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float)),
            flush=True,
        )
        _write(report, args.out)
    print(f"training C-RBP-20 for {args.train_minutes} min", flush=True)
    report["training"] = train_for(args.train_minutes, device, args.tiny, args.amp)
    _write(report, args.out)
    test = report["training"]["test"]
    print(
        f"after {report['training']['iterations']} iterations: test IoU at 20 steps "
        f"{test['20']['iou']:.4f}, at 60 steps {test['60']['iou']:.4f}; wrote {args.out}"
    )
    return 0


def _write(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
