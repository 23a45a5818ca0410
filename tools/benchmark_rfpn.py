#!/usr/bin/env python
"""Train-step time and peak memory of Panoptic FPN vs R-FPN trained with BPTT or C-RBP.

Every variant is the full Panoptic FPN model of ``--config-file`` (default the paper's R-FPN R-50)
with only the mask head changed: ``FPN`` (the 4-conv head), ``BPTT-n``, ``CRBP-n`` (also
``RBP-n``, ``CBPTT-n``, ``TBPTT-n``). One training step = forward + backward + SGD step (lr 0,
random weights, so every step does the same work) on a synthetic batch of ``--batch`` images of
``--size`` x ``--size`` pixels with ``--instances`` ground-truth instances each. The same seed
builds the same backbone, RPN and box head for every variant, so they see the same RoIs.

Each variant runs in its own process. Memory is ``torch.cuda.max_memory_allocated`` on CUDA and
the process's peak RSS (``ru_maxrss``, which includes the ~1 GB of libraries and weights) on CPU;
``step_peak_bytes`` subtracts what was allocated (CUDA) or resident (CPU) before the first step.

Example::

    python tools/benchmark_rfpn.py --size 256 --iters 3 \\
        --json docs/results/rfpn_benchmark.json --plot docs/results/rfpn_benchmark.png
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import crbp_d2.config  # noqa: F401  (first: Detectron2 compatibility + registration)
from crbp_d2.utils import cpu_model_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VARIANTS = ("FPN", "BPTT-1", "BPTT-3", "BPTT-5", "CRBP-5", "CRBP-10", "CRBP-20")
_VARIANT = re.compile(r"^(FPN|BPTT|TBPTT|RBP|CBPTT|CRBP)(?:-(\d+))?$")


def variant_opts(variant: str) -> List[str]:
    """Config overrides of a variant name such as ``CRBP-20``."""
    match = _VARIANT.match(variant)
    if match is None or (match.group(1) != "FPN" and match.group(2) is None):
        raise argparse.ArgumentTypeError(
            f"unknown variant {variant!r}: use FPN or METHOD-STEPS with METHOD one of "
            "BPTT, TBPTT, RBP, CBPTT, CRBP (e.g. CRBP-20)"
        )
    method, steps = match.group(1), match.group(2)
    if method == "FPN":
        return ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]
    return [
        "MODEL.ROI_MASK_HEAD.NAME", "RecurrentMaskHead",
        "MODEL.ROI_MASK_HEAD.RECURRENT.METHOD", method.lower(),
        "MODEL.ROI_MASK_HEAD.RECURRENT.TIMESTEPS", steps,
    ]  # fmt: skip


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", default=os.path.join(REPO, "configs", "R-FPN-R50-CRBP.yaml")
    )
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--instances", type=int, default=8, help="ground-truth instances per image")
    parser.add_argument("--iters", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the records here")
    parser.add_argument("--plot", default=None, help="write a bar plot here (PNG)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    for variant in args.variants + ([args.worker] if args.worker else []):
        variant_opts(variant)  # fail early on a bad name
    if args.size < 32 or args.batch < 1 or args.iters < 1 or args.instances < 1:
        parser.error("--size >= 32, --batch >= 1, --iters >= 1 and --instances >= 1 are required")
    return args


def synthetic_batch(args: argparse.Namespace, num_classes: int, stuff_classes: int, seed: int = 0):
    """Detectron2 training inputs: random images, rectangular-ish instances, random semantics."""
    import torch
    from detectron2.structures import BitMasks, Boxes, Instances

    generator = torch.Generator().manual_seed(seed)
    size, batch = args.size, []
    for _ in range(args.batch):
        xy = torch.randint(0, size * 3 // 4, (args.instances, 2), generator=generator).float()
        wh = torch.randint(size // 16 + 4, size // 4 + 8, (args.instances, 2), generator=generator)
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        masks = torch.zeros(args.instances, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0 : (x0 + x1) // 2 + 1] = True
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.randint(0, num_classes, (args.instances,), generator=generator)
        instances.gt_masks = BitMasks(masks)
        batch.append(
            {
                "image": torch.randint(0, 256, (3, size, size), generator=generator).float(),
                "instances": instances,
                "sem_seg": torch.randint(0, stuff_classes, (size, size), generator=generator),
                "height": size,
                "width": size,
            }
        )
    return batch


def run_worker(args: argparse.Namespace) -> Dict:
    """Measure one variant in this process; returns its record."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import crbp_d2.modeling  # noqa: F401
    from crbp_d2.config import get_crbp_cfg

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = (
        list(args.opts) + variant_opts(args.worker) + ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""]
    )
    cfg = get_crbp_cfg(args.config_file, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    batch = synthetic_batch(
        args, cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    )
    rois: List[int] = []
    model.roi_heads.mask_head.register_forward_pre_hook(
        lambda m, inputs: rois.append(inputs[0].shape[0])
    )
    cuda = device.startswith("cuda")

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with EventStorage():
        before = torch.cuda.memory_allocated() if cuda else _rss_bytes()
        step()  # warm-up
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = [step() for _ in range(args.iters)]
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        device_name = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        device_name = cpu_name()
    step_peak = max(peak - before, 0)
    match = _VARIANT.match(args.worker)
    return {
        "variant": args.worker,
        "method": "feedforward" if match.group(1) == "FPN" else match.group(1).lower(),
        "steps": int(match.group(2)) if match.group(2) else 0,
        "size": args.size,
        "batch": args.batch,
        "mask_rois": statistics.mean(rois[1:]) if len(rois) > 1 else float(rois[0]),
        "seconds_per_iter": statistics.median(times),
        "peak_bytes": int(peak),
        "step_peak_bytes": int(step_peak),
        "peak_kind": "cuda_max_memory_allocated" if cuda else "cpu_peak_rss",
        "device": device_name,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_name() -> str:
    return f"{cpu_model_name()} ({os.cpu_count()} cores)"


def table(records: List[Dict]) -> str:
    base = next((r for r in records if r["variant"] == "FPN"), None)
    lines = [
        "| variant | mask RoIs | s / iter | peak memory (MiB) | of which the step (MiB) | vs FPN |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        ratio = f"{r['peak_bytes'] / base['peak_bytes']:.2f}x" if base else "-"
        lines.append(
            f"| {r['variant']} | {r['mask_rois']:.0f} | {r['seconds_per_iter']:.2f} | "
            f"{r['peak_bytes'] / 2**20:,.0f} | {r['step_peak_bytes'] / 2**20:,.0f} | {ratio} |"
        )
    return "\n".join(lines)


def table_with_machine(records: List[Dict]) -> str:
    first = records[0]
    return (
        f"{table(records)}\n\nMeasured on {first['device']}, {first['threads']} torch thread(s), "
        f"{first['size']} px, batch {first['batch']}: one Panoptic FPN R-50 training step "
        f"(`tools/benchmark_rfpn.py`; memory = {first['peak_kind']}).\n"
    )


def plot(records: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    axes[0].bar(names, [r["seconds_per_iter"] for r in records], color="tab:blue")
    axes[0].set_ylabel("seconds per train step")
    axes[1].bar(names, [r["peak_bytes"] / 2**20 for r in records], color="tab:orange")
    axes[1].set_ylabel(f"peak memory (MiB, {records[0]['peak_kind']})")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"Panoptic FPN vs R-FPN, {records[0]['size']} px, {records[0]['device']}", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args: argparse.Namespace) -> List[Dict]:
    if args.worker:
        print("RECORD " + json.dumps(run_worker(args)), flush=True)
        return []
    records = []
    for variant in args.variants:
        command = [sys.executable, os.path.abspath(__file__), "--worker", variant]
        for flag in ("config_file", "size", "batch", "instances", "iters", "device", "threads"):
            value = getattr(args, flag)
            if value is not None:
                command += ["--" + flag.replace("_", "-"), str(value)]
        command += list(args.opts)
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RECORD ")]
        if done.returncode != 0 or not lines:
            sys.stderr.write(done.stderr[-3000:])
            raise RuntimeError(f"benchmark of {variant} failed (exit code {done.returncode})")
        records.append(json.loads(lines[-1][len("RECORD ") :]))
        print(f"{variant}: {records[-1]['seconds_per_iter']:.2f} s/iter, "
              f"{records[-1]['peak_bytes'] / 2**20:,.0f} MiB", flush=True)  # fmt: skip
    print(f"\n{records[0]['device']}, {args.size} px, batch {args.batch}, torch threads "
          f"{records[0]['threads']}\n" + table(records))  # fmt: skip
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
        with open(os.path.splitext(args.json)[0] + ".md", "w") as f:  # for tools/update_readme.py
            f.write(table_with_machine(records))
    if args.plot:
        plot(records, args.plot)
    return records


if __name__ == "__main__":
    main(parse_args())
