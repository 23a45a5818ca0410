"""Memory and time of one training step vs recurrent steps, per learning method.

The model is the recurrent core of the Pathfinder hGRU model: a (B, C, S, S) positive drive (what
the squared Gabor input layer produces), the Pathfinder hGRU for N steps with the chosen method,
and a 1x1 readout to 2 classes with a cross-entropy loss (+ LCP for the C- methods).

For every (method, steps) a record holds, for one forward + backward:
  saved_bytes   bytes of distinct storage saved for backward (each storage once, by storage and
                byte range: :class:`crbp_d2.utils.bench.SavedStorageBytes`); ``saved_counter``
                says so (records without it used the old count, every saved reference summed)
  saved_reference_bytes  the old count: numel x element size summed over every saved reference
  peak_bytes    CUDA: torch.cuda.max_memory_allocated (the allocator's peak); CPU: the process's
                peak RSS (ru_maxrss, the operating system's count: torch's CPU allocator reports
                no peak), each configuration in its own process (forked from a server that has
                imported torch and this module)
  peak_kind     which of the two peak_bytes is: ``cuda_max_memory_allocated`` | ``cpu_peak_rss``
  step_bytes    CUDA: peak minus memory allocated before the step; CPU: peak RSS minus RSS before
  seconds       wall time of the step (not a clean number when ``shared_machine``)
and the provenance fields of :func:`crbp_d2.utils.machine.machine_record`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ..recurrent import METHODS, HGRUCell, RecurrentEngine
from ..utils import machine_record, pyplot, write_results
from ..utils.bench import (
    SAVED_COUNTER,
    SavedStorageBytes,
    peak_rss_bytes,
    rss_bytes,
    run_isolated_calls,
)

__all__ = [
    "MemoryBenchmark",
    "format_table",
    "measure_one",
    "plot_memory",
    "records_markdown",
    "run_memory_benchmark",
    "table_with_machine",
    "write_memory_results",
]

Record = Dict[str, object]
PEAK_KIND = {True: "cuda_max_memory_allocated", False: "cpu_peak_rss"}  # by "on CUDA"
LCP_WEIGHT = 10.0  # weight of the LCP in the loss of the C- methods (its size does not matter here)


@dataclass(frozen=True)
class MemoryBenchmark:
    """What stays fixed across configurations: the model's size and where it runs.

    The drive is (batch, channels, size, size); the hGRU has ``kernel`` x ``kernel`` kernels.
    ``threads`` > 0 sets ``torch.set_num_threads`` (0: torch's default).
    """

    batch: int = 1
    channels: int = 25
    kernel: int = 15
    size: int = 150
    neumann_steps: int = 15
    device: str = "cpu"
    threads: int = 0

    def machine(self) -> Dict[str, object]:
        """The fields every record of these settings carries."""
        return {
            "batch": self.batch,
            "channels": self.channels,
            "kernel": self.kernel,
            "size": self.size,
        }


def measure_one(settings: MemoryBenchmark, method: str, steps: int) -> Record:
    """One training step of ``method`` with ``steps`` recurrent steps, in this process."""
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    device = torch.device(settings.device)
    cell = HGRUCell(settings.channels, settings.kernel).to(device)
    engine = RecurrentEngine(cell, steps=steps, method=method, neumann_steps=settings.neumann_steps)
    readout = torch.nn.Conv2d(settings.channels, 2, 1).to(device)
    shape = (settings.batch, settings.channels, settings.size, settings.size)
    drive = torch.rand(shape, device=device) ** 2
    target = torch.randint(0, 2, (settings.batch, settings.size, settings.size), device=device)

    # Warm-up (one-step run) so one-time allocator and kernel set-up costs are not timed.
    warm = RecurrentEngine(cell, steps=1, method=method, neumann_steps=1)(drive)
    torch.nn.functional.cross_entropy(readout(cell.output(warm.state)), target).backward()
    cell.zero_grad()
    readout.zero_grad()
    del warm
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
    saved = SavedStorageBytes()
    start = time.perf_counter()
    with saved.counting():
        out = engine(drive)
        loss = torch.nn.functional.cross_entropy(readout(cell.output(out.state)), target)
        if out.lcp is not None:
            loss = loss + LCP_WEIGHT * out.lcp
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "steps": steps,
        "saved_bytes": saved.total,
        "saved_counter": SAVED_COUNTER,
        "saved_reference_bytes": saved.references,
        "peak_bytes": peak,
        "step_bytes": peak - before,
        "peak_kind": PEAK_KIND[cuda],
        "seconds": seconds,
        "residual": out.diagnostics.residual,
        **machine_record(device),
        **settings.machine(),
    }


def _out_of_memory_record(settings: MemoryBenchmark, method: str, steps: int) -> Record:
    total = torch.cuda.get_device_properties(0).total_memory
    return {
        "method": method,
        "steps": steps,
        "saved_bytes": None,
        "peak_bytes": None,
        "step_bytes": None,
        "peak_kind": PEAK_KIND[True],
        "seconds": None,
        "error": f"out of memory (card has {total} bytes)",
        **machine_record("cuda"),
        **settings.machine(),
    }


def run_memory_benchmark(
    settings: MemoryBenchmark,
    methods: Sequence[str],
    steps: Sequence[int],
    progress: bool = True,
) -> List[Record]:
    """One record per (method, steps), methods outermost.

    On CUDA every configuration runs in this process (an out-of-memory one gets a record with
    ``error``); on CPU each runs in its own process, since the peak RSS is a per-process maximum.
    """
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    if any(s < 1 for s in steps):
        raise ValueError(f"steps must all be >= 1, got {list(steps)}")
    from tqdm import tqdm

    configs = [(m, s) for m in methods for s in steps]
    bar = tqdm(configs, desc="benchmark", unit="config", disable=not progress)
    if not settings.device.startswith("cuda"):
        jobs = [
            {"settings": dataclasses.asdict(settings), "method": method, "steps": n}
            for method, n in configs
        ]
        records = []
        for record in run_isolated_calls(_measure_job, jobs, preload=[__name__]):
            records.append(record)
            bar.update()
        bar.close()
        return records
    records = []
    for method, n in bar:
        try:
            records.append(measure_one(settings, method, n))
        except torch.cuda.OutOfMemoryError:
            records.append(_out_of_memory_record(settings, method, n))
        torch.cuda.empty_cache()
    return records


def storage_counted(records: List[Record]) -> bool:
    """Whether the records' ``saved_bytes`` count each storage once (:data:`SAVED_COUNTER`);
    records measured before that hold the old count (every saved reference summed)."""
    return all(r.get("saved_counter") == SAVED_COUNTER for r in records if not r.get("error"))


def format_table(records: List[Record]) -> str:
    """Markdown table: method, steps, MiB saved for backward (each storage once; the column is
    left out for records with the old count), peak MiB, step peak MiB, seconds (marked * when
    measured on a shared machine)."""
    saved = storage_counted(records)
    lines = [
        "| method | steps | "
        + ("saved for backward, each storage once (MiB) | " if saved else "")
        + "peak (MiB) | step peak (MiB) | seconds |",
        "|---|---:|" + ("---:|" if saved else "") + "---:|---:|---:|",
    ]
    for r in records:
        if r.get("error"):
            lines.append(
                f"| {r['method']} | {r['steps']} | {r['error']} | |"
                + (" |" if saved else "")
                + " |"
            )
            continue
        shared = "*" if r.get("shared_machine") else ""
        lines.append(
            f"| {r['method']} | {r['steps']} | "
            + (f"{r['saved_bytes'] / 2**20:.1f} | " if saved else "")
            + f"{r['peak_bytes'] / 2**20:.0f} | {r['step_bytes'] / 2**20:.0f} | "
            f"{r['seconds']:.2f}{shared} |"
        )
    return "\n".join(lines)


def table_with_machine(records: List[Record], plot_name: str) -> str:
    """The table plus a line saying what was measured on which machine (for the README)."""
    first = records[0]
    peak_kind = first.get("peak_kind", "cpu_peak_rss")
    peak = {
        "cpu_peak_rss": "the process's peak RSS (the operating system's count; torch's CPU "
        "allocator reports no peak)",
        "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated (the allocator's peak)",
    }[peak_kind]
    commit = first.get("git_commit")
    shared = any(r.get("shared_machine") for r in records)
    return (
        f"{format_table(records)}\n\n"
        f"Measured on {first['device']} with torch {first['torch']}"
        + (f", {first['threads']} torch thread(s)" if first.get("threads") else "")
        + (f", code at {commit[:10]}" if commit else "")
        + f": one training step, batch "
        f"{first['batch']}, {first['size']}x{first['size']}, {first['channels']} channels, "
        f"{first['kernel']}x{first['kernel']} kernels (`tools/benchmark_memory.py`; peak = "
        f"{peak}; "
        + (
            "saved for backward counts each storage autograd keeps for backward once, whether "
            "or not all were alive at once"
            if storage_counted(records)
            else "saved for backward not shown: this run's `saved_bytes` (kept in the JSON) is "
            "the old count, every saved reference summed, which double-counts a storage saved "
            "by several operations; awaiting a re-run with the storage count"
        )
        + f"; seconds: one timed step after a warm-up; plot `docs/results/{plot_name}`)."
        + (
            " Seconds marked * were measured on a shared machine (other work beside it): "
            "not clean timings."
            if shared
            else ""
        )
        + "\n"
    )


def records_markdown(records: List[Record], name: str) -> str:
    """``docs/results/NAME.md`` of these records (the table, the machine, plot ``NAME.png``)."""
    return table_with_machine(records, name + ".png")


def plot_memory(records: List[Record], path: str) -> None:
    """Saved bytes (the peak for records with the old count), step peak and seconds vs steps,
    one line per method (PNG at ``path``)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    first_panel = (
        ("saved_bytes", "saved for backward, each storage once (MiB)")
        if storage_counted(records)
        else ("peak_bytes", "peak (MiB)")  # the old count is not plotted
    )
    keys = [
        first_panel,
        ("step_bytes", "peak during step (MiB)"),
        ("seconds", "seconds per step"),
    ]
    for ax, (key, label) in zip(axes, keys):
        for method in dict.fromkeys(r["method"] for r in records):
            rows = sorted(
                (r for r in records if r["method"] == method and not r.get("error")),
                key=lambda r: r["steps"],
            )
            scale = 2**20 if key.endswith("bytes") else 1
            ax.plot([r["steps"] for r in rows], [r[key] / scale for r in rows], "o-", label=method)
        ax.set_xlabel("recurrent steps N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    first = records[0]
    fig.suptitle(
        f"Pathfinder hGRU core, {first['size']}x{first['size']}, batch {first['batch']}, "
        f"{first['channels']} ch, {first['kernel']}x{first['kernel']} — {first['device']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_memory_results(
    records: List[Record], json_path: str, plot_path: Optional[str] = None
) -> Dict[str, str]:
    """``STEM.json`` (records), ``STEM.md`` (table + machine) and the plot (default ``STEM.png``)
    for ``json_path`` = ``STEM.json``. Returns {"json"|"md"|"png": path}."""
    stem = os.path.splitext(json_path)[0]
    plot_path = plot_path or stem + ".png"
    table = table_with_machine(records, os.path.basename(plot_path))
    return write_results(stem, records, table, plot_memory, plot_path=plot_path)


def _measure_job(job: Dict) -> Record:
    """:func:`measure_one` of a job dict (``settings`` as a dict, ``method``, ``steps``)."""
    return measure_one(MemoryBenchmark(**job["settings"]), job["method"], int(job["steps"]))
