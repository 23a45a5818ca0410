"""Every learning method and solver of the engine, side by side: cost and gradient fidelity.

Two models: the Pathfinder hGRU core (``pathfinder``: a (1, 25, 150, 150) positive drive, the
Pathfinder hGRU with 15x15 kernels, a 1x1 readout and cross-entropy) and the R-FPN mask head's
recurrence (``rfpn_head``: 64 RoIs of 14x14x256 features, the mask-head hGRU, a 1x1 readout and
a per-pixel binary cross-entropy). For each (model, variant, steps) one training step runs in its
own process (its peak RSS is its own) and records:

  seconds              wall time of forward + backward
  saved_bytes          bytes of distinct storage autograd saved for backward (each storage once:
                       :class:`crbp_d2.utils.bench.SavedStorageBytes`; ``saved_counter`` says so)
  saved_reference_bytes  the old count (every saved reference summed)
  peak_bytes           the process's peak RSS (the OS's count; CUDA: max_memory_allocated)
  neumann_terms        VJPs the Neumann series used (rbp / crbp)
  forward_evaluations  cell evaluations of the forward pass
  grad_cosine          cosine between the variant's gradient of the task loss (the LCP left out)
                       with respect to the cell's parameters and the
                       exact implicit gradient at the fixed point (RBP from a converged state
                       with up to 400 Neumann terms, stopping at 1e-10), same weights and input
  cosine_vs_full_series        (crbp-tol) cosine against C-RBP with all K terms
and the provenance fields of :func:`crbp_d2.utils.machine.machine_record`. The crbp-tol
variant (stop the series at 1e-3 of g0) runs up to 4 K terms, so that the tolerance, not K, ends
it; its ``cosine_vs_full_series`` is against C-RBP with those 4 K terms (crbp-4k). (At K = 15
the tolerance never acted on either model: every row used all 15 terms.)

A configuration whose saved tensors would not fit this machine's memory (estimated from the
variant's bytes saved per tracked step at a smaller N) is not run; its record says so.

``python -m crbp_d2.benchmarks.methods JOB_JSON`` measures one configuration (the worker).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..recurrent import HGRUCell, MaskHeadHGRUCell, RecurrentEngine
from ..recurrent.engine import gradient_agreement
from ..utils import machine_record, markdown_table, pyplot, write_results
from ..utils.bench import (
    SAVED_COUNTER,
    SavedStorageBytes,
    peak_rss_bytes,
    print_record,
    run_isolated,
)

__all__ = ["MODELS", "VARIANTS", "MethodsBenchmark", "measure_one", "run_methods_benchmark"]

Record = Dict[str, object]
MODELS = ("pathfinder", "rfpn_head")
# variant name -> engine settings (besides steps)
VARIANTS: Dict[str, Dict[str, object]] = {
    "bptt": {"method": "bptt"},
    "tbptt": {"method": "tbptt"},
    "rbp": {"method": "rbp"},
    "crbp": {"method": "crbp"},
    "crbp-tol": {"method": "crbp", "neumann_tol": 1e-3},  # with 4 K terms at most (_terms)
    "crbp-4k": {"method": "crbp"},  # 4 K terms: what crbp-tol is compared with
    "crbp-anderson": {"method": "crbp", "solver": "anderson", "solver_tol": 1e-3},
    "jfb": {"method": "jfb"},
    "cjfb": {"method": "cjfb"},
    "phantom": {"method": "phantom"},
    "cphantom": {"method": "cphantom"},
}
LCP_WEIGHT = 10.0
REFERENCE = {"steps": 200, "neumann_steps": 200, "neumann_tol": 1e-8}  # "exact" implicit grad
MEMORY_SHARE = 0.6  # run a configuration only if its saved tensors fit in this share of RAM


@dataclass(frozen=True)
class MethodsBenchmark:
    """The fixed settings: the models' sizes, K, where it runs."""

    size: int = 150  # pathfinder: the drive is (1, channels, size, size)
    channels: int = 25
    kernel: int = 15
    rois: int = 64  # rfpn_head: the drive is (rois, width, 14, 14)
    width: int = 256
    neumann_steps: int = 15
    device: str = "cpu"
    threads: int = 1


def _model(name: str, settings: MethodsBenchmark, device: torch.device):
    """(cell, readout, drive, target, loss function) of one benchmark model, seeded."""
    torch.manual_seed(0)
    if name == "pathfinder":
        cell: nn.Module = HGRUCell(settings.channels, settings.kernel)
        drive = torch.rand(1, settings.channels, settings.size, settings.size) ** 2
        readout = nn.Conv2d(settings.channels, 2, 1)
        target = torch.randint(0, 2, (1, settings.size, settings.size))
        loss = nn.functional.cross_entropy
    elif name == "rfpn_head":
        cell = MaskHeadHGRUCell(
            settings.width, 3, timesteps=20, norm_groups=min(32, settings.width)
        )
        drive = torch.randn(settings.rois, settings.width, 14, 14)
        readout = nn.Conv2d(settings.width, 1, 1)
        target = (torch.rand(settings.rois, 1, 14, 14) > 0.5).float()
        loss = nn.functional.binary_cross_entropy_with_logits
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    return cell.to(device), readout.to(device), drive.to(device), target.to(device), loss


def reference_gradient(settings: MethodsBenchmark, model: str, gradient_file: str) -> Record:
    """The exact implicit gradient of the task loss at the fixed point (saved to
    ``gradient_file``), and how converged its state was."""
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    cell, readout, drive, target, loss_fn = _model(model, settings, torch.device(settings.device))
    engine = RecurrentEngine(cell, method="rbp", **REFERENCE)
    gradient, diagnostics = engine.parameter_gradient(
        drive, lambda state: loss_fn(readout(cell.output(state)), target)
    )
    torch.save(gradient.cpu(), gradient_file)
    return {
        "model": model,
        "reference_residual": diagnostics.residual,
        "reference_terms": diagnostics.neumann_terms,
    }


def measure_one(
    settings: MethodsBenchmark, model: str, variant: str, steps: int, gradient_file: str
) -> Record:
    """One training step; saves the flattened gradient of the cell's parameters to
    ``gradient_file`` (for the cosines, computed by the parent)."""
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    cell, readout, drive, target, loss_fn = _model(model, settings, device)
    options = dict(VARIANTS[variant], neumann_steps=_terms(variant, settings))
    engine = RecurrentEngine(cell, steps, **options)
    warm = RecurrentEngine(cell, 1, options["method"], neumann_steps=1)(drive)
    loss_fn(readout(cell.output(warm.state)), target).backward()  # allocator / kernel warm-up
    cell.zero_grad()
    del warm
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    saved = SavedStorageBytes()
    start = time.perf_counter()
    with saved.counting():
        out = engine(drive)
        loss = loss_fn(readout(cell.output(out.state)), target)
        if out.lcp is not None:
            loss = loss + LCP_WEIGHT * out.lcp
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    if out.lcp is None:
        gradient = torch.cat([p.grad.reshape(-1) for p in cell.parameters()]).double()
    else:  # the task loss's gradient alone, from one more (untimed) run without the LCP term
        gradient, _ = engine.parameter_gradient(
            drive, lambda state: loss_fn(readout(cell.output(state)), target)
        )
    torch.save(gradient.cpu(), gradient_file)
    diagnostics = out.diagnostics
    return {
        "model": model,
        "variant": variant,
        "method": options["method"],
        "solver": options.get("solver", "iterate"),
        "steps": steps,
        "seconds": seconds,
        "saved_bytes": saved.total,
        "saved_counter": SAVED_COUNTER,
        "saved_reference_bytes": saved.references,
        "peak_bytes": peak,
        "neumann_terms": diagnostics.neumann_terms,
        "neumann_terms_max": options["neumann_steps"],
        "forward_evaluations": diagnostics.forward_evaluations,
        **machine_record(device),
        "settings": dataclasses.asdict(settings),
    }


def _terms(variant: str, settings: MethodsBenchmark) -> int:
    """K for ``variant``: 4 K for crbp-tol and its reference crbp-4k (so the tolerance acts)."""
    wide = variant in ("crbp-tol", "crbp-4k")
    return 4 * settings.neumann_steps if wide else settings.neumann_steps


def _total_memory() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def _tracked_steps(variant: str, steps: int) -> int:
    method = VARIANTS[variant]["method"]
    if method in ("bptt", "cbptt"):
        return steps
    if method == "tbptt":
        return (steps + 1) // 2
    if method in ("phantom", "cphantom"):
        return min(5, steps)
    return 1


def _too_big(records: List[Record], model: str, variant: str, steps: int) -> Optional[str]:
    """Why (model, variant, steps) is not run, from a smaller N of the same variant; or None."""
    smaller = [
        r for r in records if (r["model"], r["variant"]) == (model, variant) and "seconds" in r
    ]
    if not smaller or _tracked_steps(variant, steps) == 1:
        return None
    last = max(smaller, key=lambda r: r["steps"])
    per_step = last["saved_bytes"] / _tracked_steps(variant, last["steps"])
    estimate = per_step * _tracked_steps(variant, steps)
    if estimate <= MEMORY_SHARE * _total_memory():
        return None
    return (
        f"not run: would save ~{estimate / 2**30:.1f} GiB for backward ({per_step / 2**20:.0f} "
        f"MiB per tracked step at N={last['steps']}), over {MEMORY_SHARE:.0%} of this machine's "
        f"{_total_memory() / 2**30:.0f} GiB"
    )


def run_methods_benchmark(
    settings: MethodsBenchmark,
    models: Sequence[str] = MODELS,
    variants: Sequence[str] = tuple(VARIANTS),
    steps: Sequence[int] = (5, 20, 80),
    progress: bool = True,
) -> List[Record]:
    """One record per (model, variant, steps), each measured in its own process, with the
    gradient cosines against the exact implicit gradient (one reference per model)."""
    bad = [v for v in variants if v not in VARIANTS] + [m for m in models if m not in MODELS]
    if bad:
        raise ValueError(
            f"unknown model(s) / variant(s) {bad}; models {MODELS}, variants {list(VARIANTS)}"
        )
    if any(s < 1 for s in steps):
        raise ValueError(f"steps must all be >= 1, got {list(steps)}")
    from tqdm import tqdm

    wanted = list(variants) + (
        ["crbp-4k"] if "crbp-tol" in variants and "crbp-4k" not in variants else []
    )
    configs = [(m, v, n) for m in models for v in wanted for n in sorted(steps)]
    records: List[Record] = []
    references: Dict[str, Record] = {}
    with tempfile.TemporaryDirectory() as folder:
        files = {}
        jobs = [(m, None, 0) for m in models] + configs
        for model, variant, n in tqdm(jobs, desc="methods", unit="config", disable=not progress):
            files[model, variant, n] = os.path.join(folder, f"{model}-{variant}-{n}.pt")
            job = {
                "settings": dataclasses.asdict(settings),
                "model": model,
                "variant": variant,
                "steps": n,
                "gradient_file": files[model, variant, n],
            }
            if variant is None:
                references[model] = run_isolated("crbp_d2.benchmarks.methods", [json.dumps(job)])
                continue
            why = _too_big(records, model, variant, n)
            if why:
                skipped = {"model": model, "variant": variant, "steps": n, "error": why}
                records.append({**skipped, **machine_record(settings.device)})
                continue
            records.append(run_isolated("crbp_d2.benchmarks.methods", [json.dumps(job)]))
        for record in records:
            if "error" in record:
                continue
            key = (record["model"], record["variant"], record["steps"])
            gradient = torch.load(files[key], weights_only=True)
            record.update(
                gradient_agreement(gradient, torch.load(files[key[0], None, 0], weights_only=True))
            )
            record["reference_residual"] = references[key[0]]["reference_residual"]
            if record["variant"] == "crbp-tol":
                full = torch.load(files[key[0], "crbp-4k", key[2]], weights_only=True)
                record["cosine_vs_full_series"] = gradient_agreement(gradient, full)["grad_cosine"]
    return [r for r in records if r["variant"] in variants]


def methods_table(records: Sequence[Mapping]) -> str:
    """One row per record: model, variant, steps, s/step, MiB saved, peak MiB, terms, evals,
    cosine."""

    def number(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [
        [r["model"], r["variant"], r["steps"], r["error"]] + [""] * 6
        if "error" in r
        else [
            r["model"],
            r["variant"],
            r["steps"],
            f"{r['seconds']:.2f}" + ("*" if r.get("shared_machine") else ""),
            f"{r['saved_bytes'] / 2**20:.1f}",
            f"{r['peak_bytes'] / 2**20:,.0f}",
            number(r["neumann_terms"], "d"),
            number(r["forward_evaluations"], "d"),
            f"{r['grad_cosine']:.4f}",
            number(r.get("cosine_vs_full_series"), ".5f"),
        ]
        for r in records
    ]
    new_counter = all(r.get("saved_counter") == SAVED_COUNTER for r in records if "error" not in r)
    header = [
        "model",
        "variant",
        "steps",
        "s / step",
        "saved, each storage once (MiB)" if new_counter else "saved, old count (MiB)",
        "peak (MiB)",
        "Neumann terms",
        "forward evals",
        "grad cosine vs exact",
        "cosine vs all 4K terms",
    ]
    if not any(r.get("variant") == "crbp-tol" for r in records):  # no column without its rows
        header, rows = header[:-1], [row[:-1] for row in rows]
    return markdown_table(header, rows, align="ll" + "r" * (len(header) - 2))


def plot_methods(records: List[Record], path: str) -> None:
    """Per model: seconds per step and gradient cosine against the steps, one line per variant."""
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.6 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for column, (key, label) in enumerate(
            (("seconds", "seconds per training step"), ("grad_cosine", "gradient cosine vs exact"))
        ):
            ax = axes[row][column]
            for variant in dict.fromkeys(r["variant"] for r in records):
                mine = sorted(
                    (
                        r
                        for r in records
                        if r["model"] == model and r["variant"] == variant and "error" not in r
                    ),
                    key=lambda r: r["steps"],
                )
                ax.plot(
                    [r["steps"] for r in mine], [r[key] for r in mine], "o-", ms=3, label=variant
                )
            ax.set_xscale("log")
            ax.set_xlabel("recurrent steps N")
            ax.set_title(f"{model}: {label}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def write_methods_results(records: List[Record], stem: str) -> Dict[str, str]:
    """``stem.json``, ``stem.md`` (table + machine) and ``stem.png``."""
    return write_results(stem, records, methods_markdown(records), plot_methods)


def methods_markdown(records: Sequence[Mapping], name: str = "methods") -> str:
    """The table and the line on the machine and settings (``docs/results/NAME.md``)."""
    first = next(r for r in records if "error" not in r)
    settings = first["settings"]
    residuals = {r["model"]: r["reference_residual"] for r in records if "error" not in r}
    commit = first.get("git_commit")
    shared = any(r.get("shared_machine") for r in records if "error" not in r)
    note = (
        f"\n\nMeasured on {first['device']}, {first['threads']} torch thread(s), torch "
        f"{first['torch']}" + (f", code at {commit[:10]}" if commit else "") + ": one training "
        f"step each, in its own process "
        f"(`tools/benchmark_methods.py`; pathfinder: 1 x {settings['channels']} x "
        f"{settings['size']} x {settings['size']}, {settings['kernel']}x{settings['kernel']} "
        f"kernels; rfpn_head: {settings['rois']} RoIs x {settings['width']} x 14 x 14, 3x3 "
        f"kernels; K = {settings['neumann_steps']}"
        + (
            f"; crbp-tol: stop at 1e-3 of g0, at most 4K = {4 * settings['neumann_steps']} terms, "
            "compared with crbp-4k, all 4K terms"
            if any(r.get("variant") == "crbp-tol" for r in records)
            else ""
        )
        + "). Saved: "
        + (
            "each storage autograd keeps for backward counted once"
            if first.get("saved_counter") == SAVED_COUNTER
            else "the old count, every saved reference summed (a tensor saved by several "
            "operations counted several times; this run predates the storage count)"
        )
        + "; peak: the process's peak RSS "
        "(the operating system's count; torch's CPU allocator reports no peak). Gradient "
        "cosine: against the exact implicit gradient at the fixed point (RBP from 200 steps, up "
        "to 200 terms), same weights and input; relative residual of its state: "
        + ", ".join(f"{m} {v:.1e}" for m, v in residuals.items())
        + "."
        + (
            " Seconds marked * were measured on a shared machine (other work beside it): not "
            "clean timings."
            if shared
            else ""
        )
        + "\n"
    )
    return methods_table(records) + note


def _worker(job_json: str) -> None:
    job = json.loads(job_json)
    settings = MethodsBenchmark(**job["settings"])
    if job["variant"] is None:
        print_record(reference_gradient(settings, job["model"], job["gradient_file"]))
        return
    print_record(
        measure_one(settings, job["model"], job["variant"], int(job["steps"]), job["gradient_file"])
    )


if __name__ == "__main__":
    _worker(sys.argv[1])
