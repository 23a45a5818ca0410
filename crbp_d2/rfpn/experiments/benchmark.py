"""Train-step time and peak memory of Panoptic FPN vs R-FPN trained with BPTT or C-RBP.

Every variant is the full Panoptic FPN model of a config (by default the paper's R-FPN R-50) with
only the mask head changed: ``FPN`` (the 4-conv head), ``BPTT-n``, ``CRBP-n`` (also ``RBP-n``,
``CBPTT-n``, ``TBPTT-n``). One training step = forward + backward + SGD step (lr 0, random
weights, so every step does the same work) on a synthetic batch of ``batch`` images of ``size`` x
``size`` pixels with ``instances`` ground-truth instances each. The same seed builds the same
backbone, RPN and box head for every variant, so they see the same RoIs.

Each variant runs in its own process
(``python -m crbp_d2.rfpn.experiments.benchmark SETTINGS_JSON``).
Memory is ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak RSS (``ru_maxrss``,
which includes the ~1 GB of libraries and weights) on CPU; ``step_peak_bytes`` subtracts what was
allocated (CUDA) or resident (CPU) before the first step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ...utils import device_description, pyplot, write_plot, write_results
from ...utils.bench import peak_rss_bytes, print_record, rss_bytes, run_isolated

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_VARIANTS",
    "RFPNBenchmark",
    "measure_variant",
    "plot_rfpn",
    "run_rfpn_benchmark",
    "synthetic_batch",
    "table",
    "table_with_machine",
    "variant_opts",
    "write_rfpn_results",
]

Record = Dict[str, object]
DEFAULT_CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "R-FPN-R50-CRBP.yaml")
DEFAULT_VARIANTS = ("FPN", "BPTT-1", "BPTT-3", "BPTT-5", "CRBP-5", "CRBP-10", "CRBP-20")
_VARIANT = re.compile(
    r"^(FPN|BPTT|TBPTT|RBP|CBPTT|CRBP|JFB|CJFB|PHANTOM|CPHANTOM)(?:-(\d+))?$", re.IGNORECASE
)


def parse_variant(variant: str) -> Tuple[str, int]:
    """``"CRBP-20"`` (any case) -> ``("crbp", 20)``, ``"FPN"`` -> ``("feedforward", 0)``;
    ``ValueError`` for anything else."""
    match = _VARIANT.match(variant)
    if match is None or (match.group(1).upper() != "FPN" and match.group(2) is None):
        raise ValueError(
            f"unknown variant {variant!r}: use FPN or METHOD-STEPS with METHOD one of "
            "BPTT, TBPTT, RBP, CBPTT, CRBP, JFB, CJFB, PHANTOM, CPHANTOM (e.g. CRBP-20)"
        )
    if match.group(1).upper() == "FPN":
        return "feedforward", 0
    return match.group(1).lower(), int(match.group(2))


def variant_opts(variant: str) -> List[str]:
    """Config overrides of a variant name such as ``CRBP-20``."""
    method, steps = parse_variant(variant)
    if method == "feedforward":
        return ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"]
    return [
        "MODEL.ROI_MASK_HEAD.NAME", "RecurrentMaskHead",
        "MODEL.ROI_MASK_HEAD.RECURRENT.METHOD", method,
        "MODEL.ROI_MASK_HEAD.RECURRENT.TIMESTEPS", str(steps),
    ]  # fmt: skip


@dataclass(frozen=True)
class RFPNBenchmark:
    """What stays fixed across variants: the model config, the batch and where it runs.

    ``device`` None means CUDA if available; ``threads`` None keeps torch's default.
    """

    config_file: str = DEFAULT_CONFIG
    size: int = 256
    batch: int = 1
    instances: int = 8
    iters: int = 3
    device: Optional[str] = None
    threads: Optional[int] = None
    opts: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 32 or self.batch < 1 or self.iters < 1 or self.instances < 1:
            raise ValueError(
                "size >= 32, batch >= 1, iters >= 1 and instances >= 1 are required, got "
                f"size {self.size}, batch {self.batch}, iters {self.iters}, "
                f"instances {self.instances}"
            )


def synthetic_batch(
    settings: RFPNBenchmark, num_classes: int, stuff_classes: int, seed: int = 0
) -> List[Dict]:
    """Detectron2 training inputs: ``settings.batch`` random (3, size, size) images with
    rectangular-ish instances and random semantic labels."""
    import torch
    from detectron2.structures import BitMasks, Boxes, Instances

    generator = torch.Generator().manual_seed(seed)
    size, count, batch = settings.size, settings.instances, []
    for _ in range(settings.batch):
        xy = torch.randint(0, size * 3 // 4, (count, 2), generator=generator).float()
        wh = torch.randint(size // 16 + 4, size // 4 + 8, (count, 2), generator=generator)
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        masks = torch.zeros(count, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0 : (x0 + x1) // 2 + 1] = True
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.randint(0, num_classes, (count,), generator=generator)
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


def measure_variant(settings: RFPNBenchmark, variant: str) -> Record:
    """Measure one variant in this process; returns its record."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from ..config import get_crbp_cfg

    method, steps = parse_variant(variant)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = [*settings.opts, *variant_opts(variant), "MODEL.DEVICE", device, "MODEL.WEIGHTS", ""]
    cfg = get_crbp_cfg(settings.config_file, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    batch = synthetic_batch(
        settings, cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    )
    rois: List[int] = []
    model.roi_heads.mask_head.register_forward_pre_hook(
        lambda module, inputs: rois.append(inputs[0].shape[0])
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
        before = torch.cuda.memory_allocated() if cuda else rss_bytes()
        step()  # warm-up
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = [step() for _ in range(settings.iters)]
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    return {
        "variant": variant,
        "method": method,
        "steps": steps,
        "size": settings.size,
        "batch": settings.batch,
        "mask_rois": statistics.mean(rois[1:]) if len(rois) > 1 else float(rois[0]),
        "seconds_per_iter": statistics.median(times),
        "peak_bytes": int(peak),
        "step_peak_bytes": int(max(peak - before, 0)),
        "peak_kind": "cuda_max_memory_allocated" if cuda else "cpu_peak_rss",
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_rfpn_benchmark(
    settings: RFPNBenchmark,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    on_record: Optional[Callable[[Record], None]] = None,
) -> List[Record]:
    """One record per variant, each measured in its own process; ``on_record`` is called with
    each record as soon as it is measured (e.g. to print progress)."""
    for variant in variants:
        parse_variant(variant)  # fail on bad input before the first (slow) variant runs
    if not os.path.isfile(settings.config_file):
        raise FileNotFoundError(f"config file not found: {settings.config_file}")
    job = dataclasses.asdict(settings)
    job["config_file"] = os.path.abspath(settings.config_file)
    records = []
    for variant in variants:
        record = run_isolated(
            "crbp_d2.rfpn.experiments.benchmark", [json.dumps({**job, "variant": variant})]
        )
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def table(records: List[Record]) -> str:
    """Markdown table: variant, mask RoIs, s / iter, peak MiB, step MiB, peak vs FPN."""
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


def table_with_machine(records: List[Record]) -> str:
    """The table plus a line saying what was measured on which machine (for the README)."""
    first = records[0]
    return (
        f"{table(records)}\n\nMeasured on {first['device']}, {first['threads']} torch thread(s), "
        f"{first['size']} px, batch {first['batch']}: one Panoptic FPN R-50 training step "
        f"(`tools/benchmark_rfpn.py`; memory = {first['peak_kind']}).\n"
    )


def plot_rfpn(records: List[Record], path: str) -> None:
    """Bar plots of seconds per step and peak memory per variant (PNG at ``path``)."""
    plt = pyplot()
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
    fig.savefig(path, format="png")
    plt.close(fig)


def write_rfpn_results(
    records: List[Record], json_path: Optional[str], plot_path: Optional[str]
) -> Dict[str, str]:
    """``STEM.json`` + ``STEM.md`` for ``json_path`` = ``STEM.json`` (if given) and the plot at
    ``plot_path`` (if given). Returns {"json"|"md"|"png": path}."""
    paths: Dict[str, str] = {}
    if json_path:
        stem = os.path.splitext(json_path)[0]
        paths.update(write_results(stem, records, table_with_machine(records)))
    if plot_path:
        write_plot(records, plot_rfpn, plot_path)
        paths["png"] = plot_path
    return paths


def _worker(job_json: str) -> None:
    job = json.loads(job_json)
    variant = job.pop("variant")
    job["opts"] = tuple(job["opts"])
    print_record(measure_variant(RFPNBenchmark(**job), variant))


if __name__ == "__main__":
    _worker(sys.argv[1])
