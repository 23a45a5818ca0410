#!/usr/bin/env python
"""Memory and time of one training step vs recurrent steps, per learning method.

The model is the recurrent core of the Pathfinder hGRU model: a (B, C, S, S) positive drive (what
the squared Gabor input layer produces), the Pathfinder hGRU for N steps with the chosen method,
and a 1x1 readout to 2 classes with a cross-entropy loss (+ LCP for the C- methods).

For every (method, steps) it records, for one forward + backward:
  saved_bytes   bytes saved for backward (torch.autograd.graph.saved_tensors_hooks)
  peak_bytes    CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak RSS (ru_maxrss),
                each configuration in its own process
  step_bytes    CUDA: peak minus memory allocated before the step; CPU: peak RSS minus RSS before
  seconds       wall time of the step

Usage:
  python tools/benchmark_memory.py --steps 5 20 80 --methods bptt crbp \
      --json docs/results/memory_cpu.json --plot docs/results/memory_cpu.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from crbp_d2.recurrent import METHODS, HGRUCell, RecurrentEngine  # noqa: E402
from crbp_d2.utils import cpu_model_name  # noqa: E402


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_one(args: argparse.Namespace, method: str, steps: int) -> Dict:
    """One training step of ``method`` with ``steps`` steps; returns a result record."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    cell = HGRUCell(args.channels, args.kernel).to(device)
    engine = RecurrentEngine(cell, steps=steps, method=method, neumann_steps=args.neumann_steps)
    readout = torch.nn.Conv2d(args.channels, 2, 1).to(device)
    drive = torch.rand(args.batch, args.channels, args.size, args.size, device=device) ** 2
    target = torch.randint(0, 2, (args.batch, args.size, args.size), device=device)
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    # Warm-up (one-step run) so one-time allocator and kernel set-up costs are not timed.
    warm = RecurrentEngine(cell, steps=1, method=method, neumann_steps=1)(drive)
    torch.nn.functional.cross_entropy(readout(cell.output(warm.state)), target).backward()
    cell.zero_grad()
    readout.zero_grad()
    del warm
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = engine(drive)
        loss = torch.nn.functional.cross_entropy(readout(cell.output(out.state)), target)
        if out.lcp is not None:
            loss = loss + 10.0 * out.lcp
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        device_name = torch.cuda.get_device_name(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        device_name = _cpu_name()
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "steps": steps,
        "saved_bytes": saved,
        "peak_bytes": peak,
        "step_bytes": peak - before,
        "seconds": seconds,
        "residual": out.diagnostics.residual,
        "device": device_name,
        "batch": args.batch,
        "channels": args.channels,
        "kernel": args.kernel,
        "size": args.size,
        "torch": torch.__version__,
    }


def _out_of_memory_record(args: argparse.Namespace, method: str, steps: int) -> Dict:
    total = torch.cuda.get_device_properties(0).total_memory
    return {
        "method": method,
        "steps": steps,
        "saved_bytes": None,
        "peak_bytes": None,
        "step_bytes": None,
        "seconds": None,
        "error": f"out of memory (card has {total} bytes)",
        "device": torch.cuda.get_device_name(0),
        "batch": args.batch,
        "channels": args.channels,
        "kernel": args.kernel,
        "size": args.size,
        "torch": torch.__version__,
    }


def _cpu_name() -> str:
    return f"{cpu_model_name()} ({os.cpu_count()} cores)"


def _run_isolated(args: argparse.Namespace, method: str, steps: int) -> Dict:
    """CPU peak RSS is a per-process maximum, so each configuration gets a fresh process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, str(steps)]
    for key in ("batch", "channels", "kernel", "size", "neumann_steps", "device", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_plot(records: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    keys = [
        ("saved_bytes", "saved for backward (MiB)"),
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(records: List[Dict]) -> str:
    lines = [
        "| method | steps | saved for backward (MiB) | peak (MiB) | step peak (MiB) | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if r.get("error"):
            lines.append(f"| {r['method']} | {r['steps']} | {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['saved_bytes'] / 2**20:.1f} | "
            f"{r['peak_bytes'] / 2**20:.0f} | {r['step_bytes'] / 2**20:.0f} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def _table_with_machine(records: List[Dict], plot_name: str) -> str:
    first = records[0]
    return (
        f"{format_table(records)}\n\n"
        f"Measured on {first['device']} with torch {first['torch']}: one training step, batch "
        f"{first['batch']}, {first['size']}x{first['size']}, {first['channels']} channels, "
        f"{first['kernel']}x{first['kernel']} kernels (`tools/benchmark_memory.py`; plot "
        f"`docs/results/{plot_name}`).\n"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20, 80])
    parser.add_argument("--methods", nargs="+", default=["bptt", "crbp"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=25)
    parser.add_argument("--kernel", type=int, default=15)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--neumann-steps", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--json", help="write the records here (a JSON list)")
    parser.add_argument("--plot", help="PNG plot path (default: the JSON path with .png)")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        parser.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    if any(s < 1 for s in args.steps):
        parser.error(f"--steps must all be >= 1, got {args.steps}")
    return args


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure_one(args, args.worker[0], int(args.worker[1]))))
        return []
    from tqdm import tqdm

    configs = [(m, s) for m in args.methods for s in args.steps]
    records = []
    for method, steps in tqdm(configs, desc="benchmark", unit="config"):
        if args.device.startswith("cuda"):
            try:
                records.append(measure_one(args, method, steps))
            except torch.cuda.OutOfMemoryError:
                records.append(_out_of_memory_record(args, method, steps))
            torch.cuda.empty_cache()
        else:
            records.append(_run_isolated(args, method, steps))
    print(format_table(records))
    print(f"device: {records[0]['device']}, torch {records[0]['torch']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        plot = args.plot or os.path.splitext(args.json)[0] + ".png"
        write_plot(records, plot)
        table_path = os.path.splitext(args.json)[0] + ".md"
        with open(table_path, "w") as f:
            f.write(_table_with_machine(records, os.path.basename(plot)))
        print(f"wrote {args.json}, {plot} and {table_path}")
    return records


if __name__ == "__main__":
    main()
