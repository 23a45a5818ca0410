"""Full-size Pathfinder check for a CUDA machine (< 10 minutes; no network needed).

1. Peak CUDA memory of one training step of the full-size PF14 hGRU (150 px, 25 channels,
   15x15, batch 32 on one device) for BPTT-6, C-BPTT-6, RBP-20 and C-RBP-20
   (paper Fig. 2a: BPTT-6 10.5 GB vs C-RBP 6 GB on a 12 GB Titan X).
2. A full-size PF14 C-RBP-20 model trained on on-the-fly data for a few minutes and evaluated
   on held-out images at 20 and 60 steps.

Both run the :class:`~crbp_d2.pathfinder.train.loop.Trainer`'s own training step. ``tiny``
shrinks every shape for a smoke test on a CPU.

Every memory record has the same keys on either device: ``memory_gb`` is the measure named by
``memory_measure`` (``cuda_max_memory_allocated`` on CUDA; on a CPU, which has no allocator
statistics, ``saved_tensor_bytes``: the bytes autograd saves for backward in one training step,
the part of the peak that grows with BPTT's steps), ``saved_gb`` is that count on both devices,
and the CUDA-only ``peak_allocated_gb`` / ``peak_reserved_gb`` / ``model_and_batch_gb`` are
``None`` on a CPU.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Sequence

import torch
from torch.utils.data import DataLoader, TensorDataset

from crbp_d2.utils.bench import SAVED_COUNTER, SavedStorageBytes
from crbp_d2.utils.io import atomic_write_json, atomic_write_text
from crbp_d2.utils.machine import device_description

from ..config import CONFIG_DIR, load_config
from ..data.datasets import build_dataset
from ..modeling import count_parameters
from ..train.loop import Trainer

BASE_CONFIG = CONFIG_DIR / "Base-PF.yaml"
MEMORY_RUNS = (("bptt", 6), ("cbptt", 6), ("rbp", 20), ("crbp", 20))
TINY = ["MODEL.CHANNELS", 6, "MODEL.RECURRENT.KERNEL_SIZE", 5, "DATA.IMAGE_SIZE", 48]
TINY += ["SOLVER.BATCH_SIZE", 4, "TEST.BATCH_SIZE", 4]

Log = Callable[[str], None]


def check_config(method: str, steps: int, device: str, tiny: bool, extra: Sequence = ()):
    """``Base-PF.yaml`` (full size) with ``method`` at ``steps`` steps on on-the-fly data."""
    overrides = ["MODEL.RECURRENT.METHOD", method, "MODEL.RECURRENT.TIMESTEPS", steps]
    overrides += ["DATA.SOURCE", "on_the_fly", "DATA.NUM_WORKERS", 0 if tiny else 12]
    overrides += ["DEVICE", device]
    return load_config(str(BASE_CONFIG), overrides + (TINY if tiny else []) + list(extra))


def memory_measure(device) -> str:
    """What ``memory_gb`` holds on ``device``: ``cuda_max_memory_allocated`` or, on a CPU,
    ``saved_tensor_bytes``."""
    return (
        "cuda_max_memory_allocated" if torch.device(device).type == "cuda" else "saved_tensor_bytes"
    )


def peak_memory(method: str, steps: int, device: str, batch, tiny: bool) -> dict:
    """Two :meth:`Trainer.train_step` calls on ``batch`` (the second includes Adam's state): the
    seconds per step, the loss, the bytes saved for backward by the first step and, on CUDA, the
    peak allocated / reserved memory in GB (see the module's docstring for the keys)."""
    one_batch = TensorDataset(*batch)
    trainer = Trainer(
        check_config(method, steps, device, tiny), one_batch, one_batch, progress=False
    )
    image, label = batch[0].to(trainer.device), batch[1].to(trainer.device)
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(trainer.device)
        base = torch.cuda.memory_allocated(trainer.device)
    tic = time.time()
    saved = SavedStorageBytes()
    with saved.counting():
        trainer.train_step(image, label)
    scalars = trainer.train_step(image, label)
    if cuda:
        torch.cuda.synchronize()
    result = {
        "method": method,
        "steps": steps,
        "batch": int(image.shape[0]),
        "seconds_per_step": (time.time() - tic) / 2,
        "loss": scalars["loss"],
        "memory_measure": memory_measure(trainer.device),
        "memory_gb": saved.total / 1e9,
        "saved_gb": saved.total / 1e9,
        "saved_counter": SAVED_COUNTER,
        "peak_allocated_gb": None,
        "peak_reserved_gb": None,
        "model_and_batch_gb": None,
    }
    if cuda:
        result["peak_allocated_gb"] = torch.cuda.max_memory_allocated(trainer.device) / 1e9
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(trainer.device) / 1e9
        result["model_and_batch_gb"] = base / 1e9
        result["memory_gb"] = result["peak_allocated_gb"]
        del trainer
        torch.cuda.empty_cache()
    return result


def train_for(minutes: float, device: str, tiny: bool, amp: bool, log: Log = print) -> dict:
    """Train C-RBP-20 with :meth:`Trainer.train_step` for ``minutes`` (at least one step), then
    evaluate it at 20 and 60 steps; returns the iterations, timings, a loss log every 25
    iterations and the test metrics {"20": ..., "60": ...}."""
    test_size = 64 if tiny else 512
    extra = ["DATA.TRAIN_SIZE", 200000, "DATA.TEST_SIZE", test_size, "SOLVER.AMP", amp]
    extra += ["TEST.SPECTRAL_RADIUS_ITERS", 20]
    trainer = Trainer(check_config("crbp", 20, device, tiny, extra), progress=False)
    deadline = time.time() + 60 * minutes
    losses: List[Dict[str, float]] = []
    tic = time.time()
    for image, label in trainer.train_loader(epoch=0):
        scalars = trainer.train_step(image, label)
        if trainer.iteration % 25 == 0:
            losses.append(dict(scalars, iteration=trainer.iteration))
            seconds = (time.time() - tic) / trainer.iteration
            log(f"  iter {trainer.iteration}: loss {scalars['loss']:.4f} ({seconds:.3f} s/iter)")
        if time.time() > deadline:
            break
    train_seconds = time.time() - tic
    results = trainer.evaluate((None, 60))
    evaluation_seconds = time.time() - tic - train_seconds
    iterations = trainer.iteration
    return {
        "method": "crbp",
        "steps": 20,
        "iterations": iterations,
        "images_seen": iterations * trainer.cfg.SOLVER.BATCH_SIZE,
        "train_seconds": train_seconds,
        "evaluation_seconds": evaluation_seconds,
        "seconds_per_iter": train_seconds / max(iterations, 1),
        "loss_log": losses,
        "amp": amp,
        "amp_dtype": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else None,
        "parameters": count_parameters(trainer.model),
        "test": {str(k): v for k, v in results.items()},
    }


def report_table(report: dict) -> str:
    """Markdown: one row per memory run, then a line on the training run (if it finished)."""
    from crbp_d2.utils.report import markdown_table

    # records before the storage count hold the old count (every saved reference summed): left out
    counted = all(r.get("saved_counter") == SAVED_COUNTER for r in report["memory"])
    rows = [
        [f"{r['method']}-{r['steps']}", r["batch"], f"{r['memory_gb']:.3f}"]
        + ([f"{r['saved_gb']:.3f}"] if counted else [])
        + [f"{r['seconds_per_step']:.3f}", f"{r['loss']:.3f}"]
        for r in report["memory"]
    ]
    header = ["run", "batch", f"memory (GB, {report['memory_measure']})"]
    header += ["saved for backward, each storage once (GB)"] if counted else []
    text = markdown_table(header + ["s / step", "loss"], rows)
    training = report.get("training")
    if training:
        test = training["test"]
        text += (
            f"\n\nC-RBP-20 trained for {training['train_seconds']:.0f} s ({training['iterations']} "
            f"iterations, {training['images_seen']} images, {training['seconds_per_iter']:.3f} "
            f"s / iteration, AMP {training['amp_dtype'] or 'off'}): test IoU "
            f"{test['20']['iou']:.4f} at 20 steps, {test['60']['iou']:.4f} at 60 steps."
        )
    size = "tiny shapes (smoke test)" if report["tiny"] else "full-size PF14 (150 px, 25 channels)"
    return text + (
        f"\n\nMeasured on {report['device']} with torch {report['torch']}, {size} "
        "(`tools/cuda_pathfinder_check.py`)"
        + (
            ""
            if counted
            else "; saved for backward not shown: this run's `saved_gb` (kept in the JSON) is "
            "the old count, every saved reference summed, which double-counts a storage saved "
            "by several operations; awaiting a re-run with the storage count"
        )
        + ".\n"
    )


def pathfinder_cuda_markdown(records: Sequence[dict], name: str = "pathfinder_cuda") -> str:
    """``docs/results/NAME.md`` of the check's report (one dict)."""
    return report_table(records[0])


def run_cuda_check(
    out: str,
    device: str = "cuda",
    train_minutes: float = 5.0,
    amp: bool = False,
    tiny: bool = False,
    log: Log = print,
) -> dict:
    """The memory runs, then the training run; the report is rewritten to ``out`` (a JSON file)
    after each part, so a run stopped by a time limit keeps what it measured; at the end
    ``STEM.md`` (:func:`report_table`) is written beside it. ``seconds`` holds
    the wall time of each part (``memory``, ``training``: the training loop, ``evaluation``)."""
    cuda = torch.device(device).type == "cuda"
    report: dict = {
        "device": device_description(device),
        "device_type": torch.device(device).type,
        "torch": torch.__version__,
        "tiny": tiny,
        "memory_measure": memory_measure(device),
        "total_memory_gb": (
            torch.cuda.get_device_properties(device).total_memory / 1e9 if cuda else None
        ),
        "memory": [],
        "training": None,
        "seconds": {},
    }
    log(f"device: {report['device']} (memory measure: {report['memory_measure']})")
    tic = time.time()
    cfg = check_config("bptt", 6, device, tiny)
    dataset = build_dataset(cfg, "test", size=cfg.SOLVER.BATCH_SIZE)
    batch = next(iter(DataLoader(dataset, batch_size=cfg.SOLVER.BATCH_SIZE)))
    for method, steps in MEMORY_RUNS:
        result = peak_memory(method, steps, device, batch, tiny)
        report["memory"].append(result)
        numbers = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float))
        log(f"{method}-{steps}: {numbers}")
        report["seconds"]["memory"] = time.time() - tic
        atomic_write_json(report, out)
    log(f"training C-RBP-20 for {train_minutes} min")
    report["training"] = train_for(train_minutes, device, tiny, amp, log)
    report["seconds"]["training"] = report["training"]["train_seconds"]
    report["seconds"]["evaluation"] = report["training"]["evaluation_seconds"]
    atomic_write_json(report, out)
    atomic_write_text(os.path.splitext(out)[0] + ".md", report_table(report))
    test = report["training"]["test"]
    log(
        f"after {report['training']['iterations']} iterations: test IoU at 20 steps "
        f"{test['20']['iou']:.4f}, at 60 steps {test['60']['iou']:.4f}; wrote {out}"
    )
    return report
