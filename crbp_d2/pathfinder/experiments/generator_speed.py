"""Speed of the Pathfinder generator: images per second, one process and all cores, PNG writing
included (the generator command's code path).

For each contour length one process generates and writes (image + label PNG) samples 0..n-1 to a
temporary folder; then ``W`` processes (default: all cores) do the same on disjoint index
ranges. Reports ms per image per core and the speed-up over the original generator's measured
single-core time (which excluded PNG writing). Numbers on a shared machine are upper bounds: the
load average at the start is recorded.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from crbp_d2.contours.generator import get_generator, preset
from crbp_d2.utils.io import atomic_write_json, atomic_write_text
from crbp_d2.utils.machine import machine_record
from crbp_d2.utils.procs import die_with_parent, pool_initargs
from crbp_d2.utils.report import markdown_table, pyplot

from ..data.storage import write_png_sample

# The original generator's time per image, from elsewhere: not measured by this benchmark, nor
# on the machine of its table (REFERENCE_SOURCE says where and how).
REFERENCE_S_PER_IMAGE = {6: 0.16, 9: 0.20, 14: 0.26, 20: 0.75, 25: 2.8}
REFERENCE_SOURCE = (
    "the original generator (the authors' snakes2 code, 15 distractors) timed once while this "
    "project was being designed, on a 2-core cloud VM of an earlier session (not the machine "
    "above), one process, PNG writing excluded, mean seconds per image (the project's research "
    "notes, pathfinder_reference.md); not re-measured here"
)
# Goal: 20x faster than the original per core (PF25: 20x faster than 3 s per image).
GOAL_MS_PER_IMAGE = {6: 8.0, 9: 10.0, 14: 13.0, 20: 38.0, 25: 150.0}
DEFAULT_COUNTS = {6: 800, 9: 800, 14: 600, 20: 300, 25: 150}


def _run(length: int, seed: int, start: int, stop: int, out_dir: str) -> dict:
    """Generate and write samples start..stop-1 (the CLI's code path); timings and counts."""
    generator = get_generator(preset(length))
    generator.sample(seed, start)  # warm-up (patch tables, caches) is not timed
    restarts, placed, gen_time = [], [], 0.0
    began = time.perf_counter()
    made: set = set()
    for index in range(start, stop):
        t0 = time.perf_counter()
        sample = generator.sample(seed, index)
        gen_time += time.perf_counter() - t0
        write_png_sample(out_dir, index, sample.image, sample.label, length, 25_000, made)
        restarts.append(sample.meta.pair_restarts)
        placed.append(sample.meta.distractors_placed)
    return {
        "seconds": time.perf_counter() - began,
        "generate_seconds": gen_time,
        "count": stop - start,
        "restarts": restarts,
        "placed": placed,
    }


def machine_description() -> dict:
    """:func:`~crbp_d2.utils.machine.machine_record` plus the platform, numpy and the load
    average now (``cpu_model`` repeats ``cpu``, the key of the records written before)."""
    machine = machine_record()
    return {
        **machine,
        "cpu_model": machine["cpu"],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def benchmark(lengths: Sequence[int], scale: float, workers: int, seed: int) -> dict:
    """For each contour length: 1 process, then ``workers`` processes on disjoint index ranges,
    each generating and writing PNGs to a temporary folder; ``scale`` multiplies the sample
    counts. Returns {machine, workers, seed, date, lengths: {length: timings and speed-ups}}."""
    results = {
        "machine": machine_description(),
        "workers": workers,
        "seed": seed,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "lengths": {},
    }
    with tempfile.TemporaryDirectory(prefix="pf_bench_") as tmp:
        for length in lengths:
            count = max(10, int(DEFAULT_COUNTS.get(length, 300) * scale))
            single = _run(length, seed, 0, count, tmp)
            per_worker = count
            ranges = [
                (count + k * per_worker, count + (k + 1) * per_worker) for k in range(workers)
            ]
            began = time.perf_counter()
            with ProcessPoolExecutor(
                max_workers=workers, initializer=die_with_parent, initargs=pool_initargs()
            ) as pool:
                # Warm the workers (imports, patch tables) before timing.
                list(
                    pool.map(
                        _run,
                        [length] * workers,
                        [seed] * workers,
                        [10_000_000 + k for k in range(workers)],
                        [10_000_001 + k for k in range(workers)],
                        [tmp] * workers,
                    )
                )
                began = time.perf_counter()
                parallel = list(
                    pool.map(
                        _run,
                        [length] * workers,
                        [seed] * workers,
                        [a for a, _ in ranges],
                        [b for _, b in ranges],
                        [tmp] * workers,
                    )
                )
                wall = time.perf_counter() - began
            total = sum(p["count"] for p in parallel)
            single_ms = 1000 * single["seconds"] / single["count"]
            reference_ms = 1000 * REFERENCE_S_PER_IMAGE[length]
            entry = {
                "single_process": {
                    "images": single["count"],
                    "ms_per_image": single_ms,
                    "generate_only_ms_per_image": 1000
                    * single["generate_seconds"]
                    / single["count"],
                    "images_per_second": single["count"] / single["seconds"],
                },
                "all_cores": {
                    "workers": workers,
                    "images": total,
                    "images_per_second": total / wall,
                    "ms_per_image_per_core": 1000 * wall * workers / total,
                },
                "mean_pair_restarts": float(np.mean(single["restarts"])),
                "mean_distractors_placed": float(np.mean(single["placed"])),
                "reference_ms_per_image_no_png": reference_ms,
                "goal_ms_per_image": GOAL_MS_PER_IMAGE[length],
                "speedup_vs_reference_single": reference_ms / single_ms,
                "meets_goal_single": single_ms <= GOAL_MS_PER_IMAGE[length],
            }
            results["lengths"][str(length)] = entry
            print(
                f"PF{length}: {single_ms:.1f} ms/img (1 process, PNG incl.), "
                f"{entry['all_cores']['images_per_second']:.0f} img/s on {workers} processes, "
                f"{entry['speedup_vs_reference_single']:.0f}x the original",
                flush=True,
            )
    return results


def results_table(results: dict) -> str:
    """The machine line and the Markdown table of a :func:`benchmark` result."""
    machine = results["machine"]
    header = [
        "length",
        "1 process: ms/img",
        "1 process: img/s",
        "all cores: img/s",
        "all cores: ms/img/core",
        "original (no PNG, elsewhere)",
        "speed-up: original / 1 process",
        "goal",
        "pair restarts",
        "distractors",
    ]
    rows = []
    for length, e in results["lengths"].items():
        s, a = e["single_process"], e["all_cores"]
        verdict = "(met)" if e["meets_goal_single"] else "(MISSED)"
        rows.append(
            [
                f"PF{length}",
                f"{s['ms_per_image']:.1f}",
                f"{s['images_per_second']:.0f}",
                f"{a['images_per_second']:.0f} ({a['workers']} proc.)",
                f"{a['ms_per_image_per_core']:.1f}",
                f"{e['reference_ms_per_image_no_png']:.0f} ms",
                f"{e['speedup_vs_reference_single']:.0f}x",
                f"<= {e['goal_ms_per_image']:.0f} ms {verdict}",
                f"{e['mean_pair_restarts']:.1f}",
                f"{e['mean_distractors_placed']:.1f}",
            ]
        )
    machine_line = (
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores "
        f"(load average at start {machine['load_average_at_start'][0]:.2f}); "
        f"{results['date']}; PNG writing included."
    )
    source = results.get("reference_source", REFERENCE_SOURCE)
    return (
        machine_line
        + "\n\n"
        + markdown_table(header, rows, align="l" * len(header))
        + f"\n\nOriginal: {source}. The speed-up divides that time (PNG writing excluded) by "
        "ours on 1 process here (PNG writing included)."
    )


def benchmark_markdown(records: Sequence[dict], name: str = "generator_benchmark") -> str:
    """``docs/results/NAME.md`` of the benchmark's JSON (one result dict)."""
    return results_table(records[0])


def plot(results: dict, path: Path) -> None:
    """Bars per length: the original's time, the goal, ours on 1 process and per core on all."""
    plt = pyplot()
    lengths = list(results["lengths"])
    x = np.arange(len(lengths))
    entries = [results["lengths"][k] for k in lengths]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.2
    ax.bar(
        x - 1.5 * width,
        [e["reference_ms_per_image_no_png"] for e in entries],
        width,
        label="original (1 core, no PNG)",
        color="0.6",
    )
    ax.bar(
        x - 0.5 * width,
        [e["goal_ms_per_image"] for e in entries],
        width,
        label="goal (20x)",
        color="0.85",
        edgecolor="0.4",
    )
    ax.bar(
        x + 0.5 * width,
        [e["single_process"]["ms_per_image"] for e in entries],
        width,
        label="ours, 1 process (PNG incl.)",
        color="tab:blue",
    )
    ax.bar(
        x + 1.5 * width,
        [e["all_cores"]["ms_per_image_per_core"] for e in entries],
        width,
        label=f"ours, {results['workers']} processes, per core",
        color="tab:orange",
    )
    ax.set_yscale("log")
    ax.set_xticks(x, [f"PF{k}" for k in lengths])
    ax.set_ylabel("ms per image per core (log)")
    machine = results["machine"]
    ax.set_title(
        f"Pathfinder generator, {machine['cpu_model']}, {machine['cores']} cores", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_benchmark(results: dict, json_path: Path, plot_path: Path) -> Path:
    """Write the results (with their table under "markdown") to ``json_path``, the table to
    ``json_path`` with suffix ``.md`` and the plot to ``plot_path``; returns the table's path."""
    results.setdefault("reference_source", REFERENCE_SOURCE)
    results["markdown"] = results_table(results)
    atomic_write_json(results, json_path, indent=1)
    plot(results, plot_path)
    table_path = Path(json_path).with_suffix(".md")
    atomic_write_text(table_path, results["markdown"] + "\n")
    return table_path
