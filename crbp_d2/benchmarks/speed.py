"""What the cheap C-RBP settings buy in time: ``docs/results/speed_cpu.{json,md,png}``.

Measures (the ``measure`` field of each record):

- ``pathfinder_step``: one training step (forward, backward, Adam) of the Pathfinder CPU
  protocol's model (12 channels, 5x5 kernels, 64 px, batch 8; ``configs/pathfinder/cpu_protocol``)
  on a fixed random batch at its initial weights, median of ``iters`` steps after a warm-up
  (the warm-up includes the compilation of ``COMPILE_CELL``).
- ``rfpn_step``: one Panoptic FPN R-50 training step with the mask head of each variant
  (:func:`crbp_d2.rfpn.experiments.benchmark.measure_variant`, 256 px, batch 1, 64 mask RoIs).
- ``layout_step``: one C-RBP-20 step of each cell alone in float32, in channels_last, under
  bfloat16 autocast and with the engine's ``AUTOCAST_BF16``, to decide whether those levers pay
  (timed in turns with float32 in one process: ``vs_fp32``).
- ``cell_step``: one graph-free cell step of each cell in float32, channels_last and as
  ``AUTOCAST_BF16`` runs it (in turns with float32).
- ``neumann_profile`` (``--neumann-profile [CHECKPOINT ...]``): how fast the Neumann terms of a
  Pathfinder C-RBP model decay in a training step (whether ``NEUMANN_TOL`` can stop the series)
  and what a term costs.
- ``pathfinder_job`` (wall time of a whole training job and IoU at N and 3N) comes from a run of
  ``tools/pathfinder_cpu_protocol.py`` (e.g. ``--methods crbp_fast bptt --stem
  pathfinder_cpu_fast``), read by ``--add-protocol STEM`` (:func:`protocol_job_records`);
  ``rfpn_protocol`` likewise from the R-FPN protocol (``--add-rfpn-protocol RUNS_DIR``: the
  recorded C-RBP row of ``rfpn_cpu_protocol.json`` and a re-run, finished or not).

Variants: ``bptt6`` / ``bptt5`` / ``fpn`` (the baselines), ``crbp20`` (the defaults: 19 plain
steps, 15 Neumann terms), ``crbp20-fast`` (Anderson to ``SOLVER_TOL`` with 20 as the budget,
Neumann series to ``NEUMANN_TOL`` with K = 15 as the budget), ``crbp20-compiled`` and
``crbp20-fast-compiled`` (the same with ``COMPILE_CELL``), ``crbp20-bf16`` and
``crbp20-fast-bf16`` (with ``AUTOCAST_BF16``). Each variant runs in a process of its
own, on one thread. Every record carries ``shared_machine`` (timings taken while other jobs ran
on the same cores are not clean numbers) and the machine.

Usage: ``python -m crbp_d2.benchmarks.speed [--measures pathfinder_step rfpn_step layout_step
cell_step] [--shared] [--merge]``; ``--add-records``, ``--rename`` and ``--report-only`` edit the
records and rewrite the report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ..utils import pyplot, write_results
from ..utils.bench import print_record, run_isolated
from ..utils.machine import machine_record

Record = Dict[str, object]
REPO_ROOT = Path(__file__).resolve().parents[2]
PF_CONFIGS = REPO_ROOT / "configs" / "pathfinder" / "cpu_protocol"
# the cheap settings: Anderson (m = 5) to the residual 20 plain steps reach on the trained
# protocol model (3.7e-3, docs/results/anderson_cpu.md), the Neumann series to 1e-2 of ||g0||
FAST = {"FORWARD_SOLVER": "anderson", "SOLVER_TOL": 3e-3, "NEUMANN_TOL": 1e-2}
COMPILED = {"COMPILE_CELL": True}
BF16 = {"AUTOCAST_BF16": True}
PATHFINDER_VARIANTS: Dict[str, Dict[str, object]] = {
    "bptt6": {"METHOD": "bptt", "TIMESTEPS": 6},
    "crbp20": {"METHOD": "crbp", "TIMESTEPS": 20},
    "crbp20-fast": {"METHOD": "crbp", "TIMESTEPS": 20, **FAST},
    "crbp20-compiled": {"METHOD": "crbp", "TIMESTEPS": 20, **COMPILED},
    "crbp20-fast-compiled": {"METHOD": "crbp", "TIMESTEPS": 20, **FAST, **COMPILED},
    "crbp20-bf16": {"METHOD": "crbp", "TIMESTEPS": 20, **BF16},
    "crbp20-fast-bf16": {"METHOD": "crbp", "TIMESTEPS": 20, **FAST, **BF16},
}
RFPN_VARIANTS: Dict[str, tuple] = {
    "fpn": ("FPN", {}),
    "bptt5": ("BPTT-5", {}),
    "crbp20": ("CRBP-20", {}),
    "crbp20-fast": ("CRBP-20", FAST),
    "crbp20-fast-compiled": ("CRBP-20", {**FAST, **COMPILED}),
    "crbp20-bf16": ("CRBP-20", BF16),
    "crbp20-fast-bf16": ("CRBP-20", {**FAST, **BF16}),
}


def _overrides(prefix: str, keys: Dict[str, object]) -> List[str]:
    out: List[str] = []
    for key, value in keys.items():
        out += [f"{prefix}.{key}", value if isinstance(value, str) else repr(value)]
    return out


def measure_pathfinder_step(variant: str, iters: int = 5, batch: int = 8) -> Record:
    """One variant of ``pathfinder_step``, in this process (one thread)."""
    import torch

    from ..pathfinder.config import load_config
    from ..pathfinder.losses import compute_loss
    from ..pathfinder.modeling import build_model

    torch.set_num_threads(1)
    keys = PATHFINDER_VARIANTS[variant]
    cfg = load_config(
        str(PF_CONFIGS / "base.yaml"), _overrides("MODEL.RECURRENT", keys), freeze=True
    )
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)
    size = cfg.DATA.IMAGE_SIZE
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 1, size, size, generator=generator)
    label = (torch.rand(batch, size, size, generator=generator) > 0.9).long()
    diagnostics: List[Dict[str, float]] = []

    split: List[tuple] = []

    def step() -> float:
        start = time.perf_counter()
        total, _, out = compute_loss(model, image, label, cfg)
        optimizer.zero_grad(set_to_none=True)
        middle = time.perf_counter()
        total.backward()
        optimizer.step()
        end = time.perf_counter()
        split.append((middle - start, end - middle))
        diagnostics.append(out.diagnostics.scalars() if out.diagnostics is not None else {})
        return end - start

    warm = step()
    times = [step() for _ in range(iters)]
    last = diagnostics[-1]
    timed = split[1:]
    return {
        "measure": "pathfinder_step",
        "variant": variant,
        "seconds": statistics.median(times),
        "seconds_all": times,
        "warmup_seconds": warm,
        # the profile: forward (graph-free steps, tracked step, LCP value) and backward (Neumann
        # VJPs, the LCP's double backward, the optimizer step)
        "forward_seconds": statistics.median(f for f, _ in timed),
        "backward_seconds": statistics.median(b for _, b in timed),
        "settings": {**keys, "batch": batch, "image_size": size, "channels": cfg.MODEL.CHANNELS},
        "forward_evaluations": last.get("forward_evaluations"),
        "neumann_terms": last.get("neumann_terms"),
        "solver_fell_back": last.get("solver_fell_back"),
        "residual": last.get("residual"),
        "compiled": _compiled_state(model),
    }


def _compiled_state(model) -> object:
    from ..recurrent.compiled import _STEPS

    engine = getattr(model, "engine", None)
    if engine is None or not engine.spec.compile_cell:
        return None
    step = _STEPS.get(engine.cell)
    return {"failure": None if step is None else step.failure, "calls": step and step.calls}


def measure_rfpn_step(variant: str, iters: int = 2, instances: int = 8) -> Record:
    """One variant of ``rfpn_step`` (Panoptic FPN R-50, 256 px, batch 1, 64 mask RoIs as in
    ``docs/results/rfpn_benchmark``)."""
    from ..rfpn.experiments.benchmark import RFPNBenchmark, measure_variant

    name, keys = RFPN_VARIANTS[variant]
    settings = RFPNBenchmark(
        size=256,
        batch=1,
        instances=instances,
        iters=iters,
        device="cpu",
        threads=1,
        opts=tuple(str(v) for v in _overrides("MODEL.ROI_MASK_HEAD.RECURRENT", keys)),
    )
    record = measure_variant(settings, name)
    return {
        "measure": "rfpn_step",
        "variant": variant,
        "seconds": record["seconds_per_iter"],
        "mask_rois": record["mask_rois"],
        "settings": {"variant": name, **keys, "size": 256, "batch": 1, "instances": instances},
    }


CORE_VARIANTS: Dict[str, Dict[str, object]] = {
    "bptt6": {"method": "bptt", "steps": 6},
    "crbp20": {"method": "crbp", "steps": 20},
    "crbp20-cudagraph": {"method": "crbp", "steps": 20, "cuda_graph": True},
    "crbp20-fast": {"method": "crbp", "steps": 20, "solver": "anderson", "solver_tol": 3e-3,
                    "neumann_tol": 1e-2},
    "crbp20-compiled": {"method": "crbp", "steps": 20, "compile_cell": True},  # last: compiles
}  # fmt: skip


def measure_core_step(variant: str, device: str, tiny: bool = False, iters: int = 5) -> Record:
    """``core_step``: one training step of the Pathfinder hGRU core alone (the paper's 25
    channels, 15x15 kernels, 150 px, batch 32; ``tiny``: 4 channels, 3x3, 24 px, batch 2) on
    ``device``, with ``grad_relative_error`` against the eager C-RBP-20 gradient for the
    variants that must not change it (cudagraph, compiled)."""
    import torch

    from ..recurrent import HGRUCell, RecurrentEngine

    torch.manual_seed(0)
    channels, kernel, size, batch = (4, 3, 24, 2) if tiny else (25, 15, 150, 32)
    cell = HGRUCell(channels, kernel).to(device)
    x = torch.rand(batch, channels, size, size, device=device)
    settings = CORE_VARIANTS[variant]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def step(engine) -> float:
        sync()
        start = time.perf_counter()
        cell.zero_grad(set_to_none=True)
        out = engine(x)
        loss = out.state.square().mean() + (out.lcp if out.lcp is not None else 0)
        loss.backward()
        sync()
        last.update(out.diagnostics.scalars())
        return time.perf_counter() - start

    def gradient() -> "torch.Tensor":
        return torch.cat([p.grad.reshape(-1) for p in cell.parameters()]).double()

    last: Dict[str, float] = {}
    engine = RecurrentEngine(cell, **settings, neumann_steps=15)
    warm = step(engine)
    got = gradient()
    times = [step(engine) for _ in range(iters)]
    error, used = None, dict(last)
    if variant in ("crbp20-cudagraph", "crbp20-compiled"):
        step(RecurrentEngine(cell, method="crbp", steps=20, neumann_steps=15))
        want = gradient()
        error = float((got - want).norm() / want.norm())
    return {
        "measure": "core_step",
        "variant": variant,
        "seconds": statistics.median(times),
        "warmup_seconds": warm,
        "grad_relative_error": error,
        "forward_evaluations": used.get("forward_evaluations"),
        "neumann_terms": used.get("neumann_terms"),
        "settings": {**settings, "channels": channels, "kernel": kernel, "size": size,
                     "batch": batch, "device": device},
    }  # fmt: skip


LAYOUT_VARIANTS = tuple(
    f"{cell}-{layout}"
    for cell in ("pathfinder", "mask_head")
    for layout in ("fp32", "channels_last", "bf16", "autocast_bf16")
)


def measure_layout_step(variant: str, iters: int = 3) -> Record:
    """``layout_step``: one C-RBP-20 training step (K = 15, LCP) of a cell alone on the CPU,
    float32 contiguous, float32 channels_last, the whole step under bfloat16 autocast (``bf16``:
    the tracked step and the LCP too; not an engine switch), or the engine's ``autocast_bf16``
    (the graph-free steps and the Neumann VJPs only), on the Pathfinder protocol's hGRU (12 ch,
    5x5, 64 px, batch 8) or the paper's mask-head hGRU (256 ch, 3x3, 14x14, 16 RoIs).

    A variant other than ``fp32`` is timed in turns with a float32 copy of the same cell in the
    same process (``vs_fp32``: the median of the per-turn ratios; on a shared machine both see
    the same load), and the bfloat16 variants give ``grad_relative_error``: their cell gradient
    against the float32 copy's (same weights, same input)."""
    import copy

    import torch

    from ..recurrent import RecurrentEngine

    torch.set_num_threads(1)
    name, layout = variant.split("-", 1)
    cell, x = _layout_cell(name)
    reference = copy.deepcopy(cell)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    cell, xin = cell.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    switch = layout == "autocast_bf16"
    engine = RecurrentEngine(cell, 20, "crbp", neumann_steps=15, autocast_bf16=switch)
    plain = RecurrentEngine(reference, 20, "crbp", neumann_steps=15)

    def step(engine, x, autocast: bool = False) -> float:
        start = time.perf_counter()
        engine.cell.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = engine(x)
        (out.state.float().square().mean() + out.lcp.float()).backward()
        return time.perf_counter() - start

    def gradient(module) -> "torch.Tensor":
        return torch.cat([p.grad.reshape(-1) for p in module.parameters()]).double()

    warm = step(engine, xin, layout == "bf16")
    got = gradient(cell)
    times, ratios = [], []
    for _ in range(iters):
        times.append(step(engine, xin, layout == "bf16"))
        if layout != "fp32":
            ratios.append(times[-1] / step(plain, x))
    error = None
    if layout in ("bf16", "autocast_bf16"):
        step(plain, x)
        want = gradient(reference)
        error = float((got - want).norm() / want.norm())
    return {
        "measure": "layout_step",
        "variant": variant,
        "seconds": statistics.median(times),
        "seconds_all": times,
        "warmup_seconds": warm,
        "vs_fp32": statistics.median(ratios) if ratios else None,
        "grad_relative_error": error,
        "settings": {"cell": name, "layout": layout, "method": "crbp", "steps": 20},
    }


def _layout_cell(name: str) -> tuple:
    """(cell, input) of ``layout_step`` / ``cell_step``: the Pathfinder protocol's hGRU or the
    paper's mask-head hGRU, seeded."""
    import torch

    from ..recurrent import HGRUCell, MaskHeadHGRUCell

    torch.manual_seed(0)
    if name == "pathfinder":
        return HGRUCell(12, 5), torch.rand(8, 12, 64, 64)
    return MaskHeadHGRUCell(256, 3), torch.rand(16, 256, 14, 14)


CELL_STEP_VARIANTS = tuple(
    f"{cell}-{layout}"
    for cell in ("pathfinder", "mask_head")
    for layout in ("fp32", "channels_last", "bf16")
)


def measure_cell_step(variant: str, iters: int = 30) -> Record:
    """``cell_step``: one graph-free cell evaluation (what the forward solver repeats) of the
    ``layout_step`` cells at a state 20 steps in, float32 contiguous, float32 channels_last, or
    as the engine's ``autocast_bf16`` runs it (``bf16``); median of ``iters`` calls. A variant
    other than ``fp32`` is timed in turns with the float32 step (``vs_fp32``: the median of the
    per-turn ratios)."""
    import torch

    from ..recurrent.base import cell_init_state, cell_prepare
    from ..recurrent.bf16 import bf16_step

    torch.set_num_threads(1)
    name, layout = variant.split("-", 1)
    cell, x = _layout_cell(name)
    times, ratios = [], []
    with torch.no_grad():
        drive = cell_prepare(cell, x)
        state = cell_init_state(cell, drive)
        for _ in range(20):
            state = cell(drive, state)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        tested = copy_to_format(cell, fmt)
        step = bf16_step(tested) if layout == "bf16" else tested
        args = (drive.contiguous(memory_format=fmt), state.contiguous(memory_format=fmt))

        def timed(function, *inputs) -> float:
            start = time.perf_counter()
            function(*inputs)
            return time.perf_counter() - start

        timed(step, *args), timed(cell, drive, state)  # warm-up
        for _ in range(iters):
            times.append(timed(step, *args))
            if layout != "fp32":
                ratios.append(times[-1] / timed(cell, drive, state))
    return {
        "measure": "cell_step",
        "variant": variant,
        "seconds": statistics.median(times),
        "seconds_all": times,
        "vs_fp32": statistics.median(ratios) if ratios else None,
        "settings": {"cell": name, "layout": layout, "calls": iters},
    }


def copy_to_format(module, memory_format):
    """A copy of ``module`` in ``memory_format`` (the module itself for contiguous)."""
    import copy

    import torch

    if memory_format == torch.contiguous_format:
        return module
    return copy.deepcopy(module).to(memory_format=memory_format)


STEP_MEASURES = ("pathfinder_step", "rfpn_step", "layout_step", "cell_step")

# the float32 C-RBP-20 step measured right before its bfloat16 twin (``--rename ... crbp20
# crbp20-fp32-pair`` keeps it apart from the other rows' crbp20, taken at another time)
PAIR_VARIANT = "crbp20-fp32-pair"

# the baselines of the job tables (per measure and seed)
JOB_BASELINES = ("bptt6", "bptt5")  # and the records marked ``baseline``

# the CPU protocol's method labels -> this benchmark's variant names
PROTOCOL_VARIANTS = {
    "bptt": "bptt6",
    "crbp": "crbp20",
    "crbp_fast": "crbp20-fast",
    "crbp_fast_tol12": "crbp20-fast-tol0.12",
    "cjfb": "cjfb20",
}


def protocol_job_records(
    results_dir: "str | Path", stem: str, shared: bool = False
) -> List[Record]:
    """``pathfinder_job`` records from a finished CPU-protocol run (``STEM.json`` and
    ``STEM_summary.json`` in ``results_dir``): each job's wall time (``seconds``, the whole
    training job) and its IoU at N and at 3N on the protocol's test images, with the machine
    and the shared-machine flag the run recorded (or ``shared``, for runs that did not record
    it)."""
    with open(os.path.join(results_dir, stem + ".json")) as f:
        evaluations = json.load(f)
    with open(os.path.join(results_dir, stem + "_summary.json")) as f:
        summary = json.load(f)
    records: List[Record] = []
    for label, seconds in summary["job_seconds"].items():
        rows = [r for r in evaluations if r.get("method") == label]
        n = rows[0]["train_steps"]
        iou = {r["eval_steps"]: r["iou"] for r in rows}
        records.append(
            {
                "measure": "pathfinder_job",
                "variant": PROTOCOL_VARIANTS.get(label, label),
                "seconds": seconds,
                "iou_n": iou.get(n),
                "iou_3n": iou.get(3 * n),
                "settings": {"steps": n, "config": summary.get("configs", {}).get(label)},
                "source": f"docs/results/{stem}.json",
                "shared_machine": shared or bool(summary["machine"].get("shared_machine")),
                "machine": summary["machine"],
            }
        )
    return records


PROFILE_TERMS = (1, 2, 4, 6, 8, 15)  # the terms shown in the profile's table


def measure_neumann_profile(
    checkpoint: Optional[str], terms: int = 40, tol: float = 1e-2, batch: int = 8
) -> Record:
    """``neumann_profile``: how fast the Neumann terms of a Pathfinder C-RBP model decay in a
    training step, i.e. whether ``NEUMANN_TOL`` can stop the series early. From ``checkpoint``
    (a trainer checkpoint, read only) or, if None, the protocol model at its initial weights
    (seed 0): one training-mode step (batch statistics, as in training) on ``batch`` test
    images with the series run to ``terms`` terms without a tolerance. Gives ``term_ratios``
    (||(J^T)^k g0|| / ||g0||, k = 0..terms: what the stopping test compares with ``tol``), the
    first k where it falls to ``tol`` (None: not within ``terms``), the tail's contraction per
    term, and the time of the backward pass with K = 15 and with K = 1 (the VJPs' share)."""
    import torch

    from ..pathfinder.config import load_config
    from ..pathfinder.evaluation.analysis import make_test_loader
    from ..pathfinder.losses import compute_loss
    from ..pathfinder.modeling import build_model

    torch.set_num_threads(1)
    if checkpoint is None:
        cfg = load_config(str(PF_CONFIGS / "base.yaml"), freeze=True)
        torch.manual_seed(0)
        model = build_model(cfg)
    else:
        model, cfg = _load_pathfinder_weights(checkpoint)
    model.train()
    image, label = next(iter(make_test_loader(cfg, batch_size=batch)))
    engine = model.engine
    trained_spec = engine.spec

    def backward_with(k: int) -> tuple:
        engine.spec = trained_spec.replace(neumann_steps=k, neumann_tol=None)
        model.zero_grad(set_to_none=True)
        total, _, out = compute_loss(model, image, label, cfg)
        start = time.perf_counter()
        total.backward()
        return time.perf_counter() - start, out.diagnostics

    _, diagnostics = backward_with(terms)
    norms = diagnostics.neumann.term_norms
    ratios = [n / norms[0] for n in norms]
    reach = next((k for k, r in enumerate(ratios) if k > 0 and r <= tol), None)
    tail = ratios[-11:]
    contraction = (tail[-1] / tail[0]) ** (1.0 / (len(tail) - 1)) if tail[0] > 0 else None
    backward_15 = statistics.median(backward_with(15)[0] for _ in range(3))
    backward_1 = statistics.median(backward_with(1)[0] for _ in range(3))
    engine.spec = trained_spec
    return {
        "measure": "neumann_profile",
        "variant": "init" if checkpoint is None else "trained",
        "seconds": backward_15,
        "backward_seconds_k15": backward_15,
        "backward_seconds_k1": backward_1,
        "term_ratios": ratios,
        "tol": tol,
        "terms_to_tol": reach,
        "tail_contraction": contraction,
        "residual": diagnostics.residual,
        "settings": {
            "checkpoint": None if checkpoint is None else _relative(checkpoint),
            "terms": terms,
            "batch": batch,
            "steps": trained_spec.steps,
            "neumann_tol_trained": trained_spec.neumann_tol,
        },
    }


def _load_pathfinder_weights(checkpoint: str) -> tuple:
    """(model, config) from a Pathfinder trainer checkpoint, read as data only. Checkpoints
    whose RNG state holds numpy arrays (which :mod:`crbp_d2.utils.safe_load` refuses) are read
    with numpy's array reconstruction allowed as well; only their weights and config are used."""
    import numpy as np
    import torch

    from ..pathfinder.config import config_from_dump
    from ..pathfinder.evaluation.analysis import load_trained
    from ..pathfinder.modeling import build_model
    from ..utils.safe_load import CheckpointReadError

    try:
        return load_trained(checkpoint)
    except CheckpointReadError:
        from numpy._core.multiarray import _reconstruct

        arrays = [_reconstruct, np.ndarray, np.dtype, type(np.dtype("uint32"))]
        with torch.serialization.safe_globals(arrays):
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = config_from_dump(state["config"], checkpoint)
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model, cfg


def neumann_profile_text(records: Sequence[Record]) -> str:
    """The profile's table and what it says about the missed goals, from the records."""
    profiles = [r for r in records if r["measure"] == "neumann_profile"]
    if not profiles:
        return ""
    shown = [k for k in PROFILE_TERMS if k < len(profiles[0]["term_ratios"])]
    lines = [
        "",
        "Neumann profile (`--neumann-profile`): ||(J^T)^k g0|| / ||g0|| in one training-mode step "
        "of the Pathfinder C-RBP-20 model (what `NEUMANN_TOL` is compared with), the first k "
        "where it reaches the tolerance, the contraction per term over the last 10 terms, and "
        "the backward pass with K = 15 against K = 1.",
        "",
        "| weights | " + " | ".join(f"k = {k}" for k in shown)
        + " | k to reach tol | tail contraction | backward s K=15 | K=1 |",
        "|---|" + "---:|" * (len(shown) + 4),
    ]  # fmt: skip
    for r in profiles:
        ratios = r["term_ratios"]
        reach = r["terms_to_tol"]
        reach_text = f"{reach} (tol {r['tol']:g})" if reach else f"> {len(ratios) - 1}"
        contraction = r.get("tail_contraction")
        lines.append(
            f"| {r['variant']} | " + " | ".join(f"{ratios[k]:.3g}" for k in shown)
            + f" | {reach_text} | {'' if contraction is None else f'{contraction:.3f}'} | "
            f"{r['backward_seconds_k15']:.3f} | {r['backward_seconds_k1']:.3f} |"
        )  # fmt: skip
    trained = next((r for r in profiles if r["variant"] == "trained"), profiles[0])
    ratios = trained["term_ratios"]
    k15 = ratios[15] if len(ratios) > 15 else None
    vjp = (trained["backward_seconds_k15"] - trained["backward_seconds_k1"]) / 14
    fired = k15 is not None and k15 <= trained["tol"]
    lines += [
        "",
        f"`NEUMANN_TOL` {trained['tol']:g} ({trained['variant']} weights): after 15 terms the "
        f"term is {k15:.3g} of ||g0||, so the test (term <= tol x ||g0||) "
        + ("fires within K = 15" if fired else "never fires within K = 15")
        + f"; a tolerance of {k15:.3g} would stop the series at 15 terms, {ratios[8]:.3g} at 8 "
        f"and {ratios[6]:.3g} at 6. Each term costs about {vjp:.3f} s here (the backward pass "
        "with K = 15 minus K = 1, over 14).",
    ]
    jobs = {r["variant"]: r for r in records if r["measure"] == "pathfinder_job"}
    steps = {r["variant"]: r for r in records if r["measure"] == "pathfinder_step"}
    if "crbp20-fast" in jobs and "bptt6" in jobs and "crbp20-fast" in steps and "bptt6" in steps:
        fast, bptt = steps["crbp20-fast"], steps["bptt6"]
        factor = jobs["crbp20-fast"]["seconds"] / jobs["bptt6"]["seconds"]
        lines.append(
            f"The C-RBP-20-fast job took {factor:.2f}x BPTT-6's: its step spends "
            f"{fast['forward_seconds']:.3f} s forward ({int(fast['forward_evaluations'])} "
            f"evaluations) and {fast['backward_seconds']:.3f} s backward "
            f"({int(fast['neumann_terms'])} VJPs and the LCP's double backward), against "
            f"BPTT-6's {bptt['forward_seconds']:.3f} s and {bptt['backward_seconds']:.3f} s "
            "(pathfinder_step rows): the backward, with all its terms, is where the time goes."
        )
    return "\n".join(lines)


RFPN_SETTING_KEYS = ("FORWARD_SOLVER", "SOLVER_TOL", "NEUMANN_TOL", "NEUMANN_STEPS", "TIMESTEPS")


def _rfpn_protocol_record(
    rows: Sequence[Mapping], variant: str, source: str, shared: Optional[bool]
) -> Record:
    """One ``rfpn_protocol`` record from one run's protocol records (one per evaluated step
    count): the training job's seconds, GT-box mask IoU (as a fraction) at N and at 3N."""
    n = rows[0]["train_steps"]
    iou = {r["eval_steps"]: r["gt_box_iou"] / 100.0 for r in rows}
    first = rows[0]
    machine = first.get("provenance") or {
        k: first.get(k) for k in ("device", "torch", "threads", "git_commit") if k in first
    }
    return {
        "measure": "rfpn_protocol",
        "variant": variant,
        "seed": first["seed"],
        "seconds": first["train_minutes"] * 60.0,
        "seconds_per_iter": first.get("seconds_per_iter"),
        "iou_n": iou.get(n),
        "iou_3n": iou.get(3 * n),
        "settings": {"dataset": first["dataset"], "head": first["head"], "steps": n},
        **({"seconds_note": first["train_note"]} if first.get("train_note") else {}),
        "source": source,
        "shared_machine": shared,
        "machine": machine,
    }


def rfpn_protocol_records(
    runs_dir: "str | Path",
    variant: str,
    baseline: "str | Path" = REPO_ROOT / "docs" / "results" / "rfpn_cpu_protocol.json",
    baseline_variant: str = "crbp6",
    dataset: str = "contours",
    head: str = "crbp",
    shared: bool = True,
) -> List[Record]:
    """``rfpn_protocol`` records: the recorded C-RBP row of the R-FPN protocol (``baseline``,
    the protocol's records; its ``shared_machine`` as recorded, None where it was not) and a
    re-run with other engine settings (``runs_dir/DATASET/HEAD/seed*/record.json``, as
    ``crbp_d2.rfpn.experiments.cpu_protocol`` leaves them; ``shared``: taken on a shared
    machine). The re-run's engine settings are read from its ``config.yaml`` and the mean
    forward evaluations and Neumann terms of its training from its ``metrics.json``."""
    with open(baseline) as f:
        recorded = [r for r in json.load(f) if r["dataset"] == dataset and r["head"] == head]
    if not recorded:
        raise ValueError(f"{baseline}: no {dataset}/{head} records")
    records: List[Record] = []
    for seed in sorted({r["seed"] for r in recorded}):
        rows = [r for r in recorded if r["seed"] == seed]
        record = _rfpn_protocol_record(rows, baseline_variant, _relative(baseline), None)
        record["shared_machine"] = (rows[0].get("provenance") or {}).get("shared_machine")
        record["baseline"] = True
        records.append(record)
    folders = sorted(Path(runs_dir, dataset, head).glob("seed*/metrics.json"))
    if not folders:
        raise FileNotFoundError(f"no run under {Path(runs_dir, dataset, head)}")
    for metrics in folders:
        folder = metrics.parent
        if (folder / "record.json").is_file():
            with open(folder / "record.json") as f:
                rows = json.load(f)
            record = _rfpn_protocol_record(rows, variant, _relative(folder), shared)
        else:  # stopped before the end: what its training logged, no accuracy
            record = _unfinished_rfpn_run(folder, variant, dataset, head, shared)
        record["settings"].update(_run_engine_settings(folder))
        records.append(record)
    return records


def _unfinished_rfpn_run(
    folder: Path, variant: str, dataset: str, head: str, shared: bool
) -> Record:
    """A protocol run stopped before the end (no ``record.json``): the iterations it did of its
    schedule and, through :func:`_run_engine_settings`, what its training logged."""
    import yaml

    with open(folder / "metrics.json") as f:
        done = max(json.loads(line).get("iteration", -1) for line in f if line.strip()) + 1
    with open(folder / "config.yaml") as f:
        config = yaml.safe_load(f)
    return {
        "measure": "rfpn_protocol",
        "variant": variant,
        "seed": config.get("SEED"),
        "seconds": None,
        "finished": False,
        "iterations_done": done,
        "iou_n": None,
        "iou_3n": None,
        "settings": {
            "dataset": dataset,
            "head": head,
            "steps": config["MODEL"]["ROI_MASK_HEAD"]["RECURRENT"]["TIMESTEPS"],
            "max_iter": config["SOLVER"]["MAX_ITER"],
        },  # fmt: skip
        "source": _relative(folder),
        "shared_machine": shared,
        "machine": {**machine_record("cpu"), "threads": 1},
    }


def _relative(path: "str | Path") -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:  # outside the repository: no absolute path, the last folders only
        return str(Path(*path.parts[-4:]))


def _run_engine_settings(folder: Path) -> Dict[str, object]:
    """The engine keys of a Detectron2 run (``config.yaml``) and the mean forward evaluations
    and Neumann terms its training logged (``metrics.json``, ``<method>/...`` scalars)."""
    import yaml

    settings: Dict[str, object] = {}
    config = folder / "config.yaml"
    if config.is_file():
        with open(config) as f:
            node = yaml.safe_load(f)["MODEL"]["ROI_MASK_HEAD"]["RECURRENT"]
        settings.update({k: node[k] for k in RFPN_SETTING_KEYS if k in node})
    metrics = folder / "metrics.json"
    if metrics.is_file():
        sums: Dict[str, List[float]] = {}
        with open(metrics) as f:
            for line in f:
                row = json.loads(line)
                for key, value in row.items():
                    name = key.split("/")[-1]
                    if name in ("forward_evaluations", "neumann_terms", "solver_residual") and (
                        "/" in key
                    ):
                        sums.setdefault(name, []).append(float(value))
        settings.update({f"mean_{k}": statistics.mean(v) for k, v in sums.items()})
    return settings


def levers_text(records: Sequence[Record]) -> str:
    """What channels_last and the ``autocast_bf16`` switch give per cell against float32 (the
    ``vs_fp32`` of ``cell_step`` and ``layout_step``, timed in turns; the step variants with
    and without the switch), and the verdict: a lever is kept only where it wins everywhere it
    was measured."""

    def factor(measure: str, variant: str) -> Optional[float]:
        row = next((r for r in records if (r["measure"], r["variant"]) == (measure, variant)), None)
        return None if row is None else row.get("vs_fp32")

    def pair(measure: str, on: str, off: str) -> Optional[float]:
        rows = {r["variant"]: r["seconds"] for r in records if r["measure"] == measure}
        return rows[on] / rows[off] if on in rows and off in rows else None

    def show(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines = ["", "Levers against float32 (time with the lever / without; cell step and C-RBP-20 "
             "step of the cell timed in turns in one process, the training step in separate "
             "processes one after the other; < 1 wins):", "",
             "| lever | cell | cell step | C-RBP-20 step of the cell | training step | "
             "grad rel. error | verdict |", "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    found = False
    for lever, cell_layout, step_layout in (
        ("channels_last", "channels_last", "channels_last"),
        ("AUTOCAST_BF16", "bf16", "autocast_bf16"),
    ):
        for cell, training in (("pathfinder", "pathfinder_step"), ("mask_head", "rfpn_step")):
            cell_factor = factor("cell_step", f"{cell}-{cell_layout}")
            step_factor = factor("layout_step", f"{cell}-{step_layout}")
            train = None
            if lever == "AUTOCAST_BF16":
                train = pair(training, "crbp20-bf16", PAIR_VARIANT) or pair(
                    training, "crbp20-bf16", "crbp20"
                )
            if cell_factor is None and step_factor is None:
                continue
            found = True
            error = next((r.get("grad_relative_error") for r in records
                          if r["variant"] == f"{cell}-{step_layout}"
                          and r["measure"] == "layout_step"), None)  # fmt: skip
            measured = [v for v in (cell_factor, step_factor, train) if v is not None]
            verdict = "wins" if all(v < 1.0 for v in measured) else "does not win everywhere"
            lines.append(
                f"| {lever} | {cell} | {show(cell_factor)} | {show(step_factor)} | "
                f"{show(train)} ({training}) | {'' if error is None else f'{error:.1e}'} | "
                f"{verdict} |"
            )
    return "\n".join(lines) if found else ""


def _job_baseline_of(candidate: Mapping, record: Mapping) -> bool:
    """True when ``candidate`` is the baseline job of ``record``: the same measure and seed, a
    baseline variant or a record marked ``baseline``; for ``pathfinder_job`` also the same
    protocol run (the jobs of one run ran side by side)."""
    return (
        candidate["measure"] == record["measure"]
        and (candidate["variant"] in JOB_BASELINES or bool(candidate.get("baseline")))
        and candidate.get("seed") == record.get("seed")
        and (
            record["measure"] != "pathfinder_job" or candidate.get("source") == record.get("source")
        )
    )


def _same_device(a: Mapping, b: Mapping) -> bool:
    """Both records name their machine and it is the same one."""
    device = (a.get("machine") or {}).get("device")
    return device is not None and device == (b.get("machine") or {}).get("device")


def table(records: Sequence[Record]) -> str:
    """Markdown: per measure, seconds and the factor against the first baseline."""
    lines = [
        "| measure | variant | s / step | vs C-RBP-20 | vs baseline | evaluations | terms "
        "| forward s | backward s | grad rel. error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    jobs = [r for r in records if r["measure"].endswith(("_job", "_protocol"))]
    profiles = [r for r in records if r["measure"] == "neumann_profile"]
    steps = [r for r in records if r not in jobs and r not in profiles]
    for measure in dict.fromkeys(r["measure"] for r in steps):
        rows = [r for r in records if r["measure"] == measure]
        crbp = next((r["seconds"] for r in rows if r["variant"] in ("crbp20",)), None)
        per_cell = measure in ("layout_step", "cell_step")
        if per_cell:  # against the same cell in float32
            crbp = None
        base = next((r for r in rows if r["variant"] in ("bptt6", "bptt5")), None)
        for r in rows:
            if per_cell:  # the baseline: the same cell in float32, contiguous
                cell = r["variant"].split("-")[0]
                base = next((b for b in rows if b["variant"] == f"{cell}-fp32"), None)
            reference = crbp
            twin = next((b["seconds"] for b in rows if b["variant"] == PAIR_VARIANT), None)
            if twin and (r["variant"].endswith("-bf16") or r["variant"] == PAIR_VARIANT):
                reference = twin  # the bf16 pair: against the float32 run taken with it
            vs_crbp = f"{r['seconds'] / reference:.2f}" if reference else ""
            vs_base = f"{r['seconds'] / base['seconds']:.2f}" if base else ""
            if r.get("vs_fp32") is not None:  # timed in turns with float32 (same load)
                vs_base = f"{r['vs_fp32']:.2f}"
            evals = r.get("forward_evaluations", r["settings"].get("steps"))
            terms = r.get("neumann_terms")
            split = [r.get("forward_seconds"), r.get("backward_seconds")]
            forward, backward = ("" if v is None else f"{v:.3f}" for v in split)
            error = r.get("grad_relative_error")
            digits = 4 if measure == "cell_step" else 3
            lines.append(
                f"| {measure} | {r['variant']} | {r['seconds']:.{digits}f} | {vs_crbp} | "
                f"{vs_base} | {'' if evals is None else int(evals)} | "
                f"{'' if terms is None else int(terms)} | {forward} | {backward} | "
                f"{'' if error is None else f'{error:.1e}'} |"
            )
    if jobs:
        lines += [
            "",
            "| measure | variant | job seconds | vs baseline | IoU at N | IoU at 3N |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in jobs:
            label = r["variant"] + ("" if r.get("seed") is None else f" (seed {r['seed']})")
            if r["measure"] == "pathfinder_job" and r.get("source"):
                label += f" [{Path(r['source']).stem}]"  # the protocol run it came from
            if r.get("seconds") is None:  # a run stopped before the end
                settings = r["settings"]
                used = ""
                if settings.get("mean_forward_evaluations") is not None:
                    used = (
                        f" (mean evaluations {settings['mean_forward_evaluations']:.1f} of "
                        f"{settings.get('TIMESTEPS')}, terms {settings['mean_neumann_terms']:.1f} "
                        f"of {settings.get('NEUMANN_STEPS')})"
                    )
                lines.append(
                    f"| {r['measure']} | {label} | unfinished: {r.get('iterations_done')} of "
                    f"{settings.get('max_iter')} iterations{used} | | | |"
                )
                continue
            base = next((b for b in jobs if _job_baseline_of(b, r)), None)
            vs_base = ""
            if base is r or (base is not None and _same_device(base, r)):
                vs_base = f"{r['seconds'] / base['seconds']:.2f}"
            elif base is not None:
                vs_base = "other machine"
            ious = ("" if r.get(k) is None else f"{r[k]:.3f}" for k in ("iou_n", "iou_3n"))
            mark = "*" if r.get("shared_machine") else ""
            lines.append(
                f"| {r['measure']} | {label} | {r['seconds']:.0f}{mark} | {vs_base} | "
                + " | ".join(ious)
                + " |"
            )
        lines += [
            "",
            "job seconds: the whole training job (the protocol's jobs run two side by side, one "
            "thread each), read from the protocol run's records (`--add-protocol STEM`; "
            "rfpn_protocol: `--add-rfpn-protocol RUNS_DIR`, the GT-box mask IoU as a fraction, "
            "against the recorded C-RBP-6 row of `rfpn_cpu_protocol.json`, whose timings were "
            "not flagged: its seed 0 ran at 0.59 s/iter, seed 1 at 0.31). *: taken on a shared "
            "machine (not a clean number). other machine: the baseline job ran on another "
            "machine, or did not record which, so no ratio is given.",
        ]
    if any(r["variant"] == PAIR_VARIANT for r in steps):
        lines += [
            "",
            f"{PAIR_VARIANT} / crbp20-bf16: one float32 and one AUTOCAST_BF16 C-RBP-20 step taken "
            "one after the other, later and under a heavier load than the other rows (their "
            "load average is in the records' machine); compare them with each other only.",
        ]
    lines.append(levers_text(records))
    if profiles:
        lines.append(neumann_profile_text(records))
    machine = next((r["machine"] for r in steps), {}) if steps else {}
    shared = any(r.get("shared_machine") for r in records)
    lines += [
        "",
        "forward s / backward s (pathfinder_step): the forward pass (graph-free steps, tracked "
        "step, LCP value) and the backward pass with the optimizer step (Neumann VJPs, the "
        "LCP's double backward).",
        "",
        f"Measured on {machine.get('device', '?')}, torch {machine.get('torch', '?')}, 1 thread "
        "per variant, each in its own process (`python -m crbp_d2.benchmarks.speed`)."
        + (
            " **Shared machine**: other jobs ran on the same 2 cores while these were taken; "
            "the factors are indicative, not clean numbers."
            if shared
            else ""
        ),
    ]
    return "\n".join(lines)


def plot(records: Sequence[Record], path: str) -> None:
    plt = pyplot()
    measures = list(dict.fromkeys(r["measure"] for r in records))
    fig, axes = plt.subplots(1, len(measures), figsize=(5 * len(measures), 3.5), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        rows = [r for r in records if r["measure"] == measure]
        if measure == "neumann_profile":
            for r in rows:
                ax.semilogy(r["term_ratios"], label=f"{r['variant']} weights")
            ax.axhline(rows[0]["tol"], color="gray", ls="--", label="NEUMANN_TOL")
            ax.axvline(15, color="gray", ls=":", label="K = 15")
            ax.set_xlabel("Neumann term k")
            ax.set_ylabel("||(J^T)^k g0|| / ||g0||")
            ax.set_title("Neumann terms (Pathfinder C-RBP-20)")
            ax.legend(fontsize=7)
            continue
        rows = [r for r in rows if r.get("seconds") is not None]  # not the unfinished runs
        labels = [r["variant"] + ("" if r.get("seed") is None else f" s{r['seed']}") for r in rows]
        ax.barh(labels, [r["seconds"] for r in rows], color="tab:blue")
        job = measure.endswith(("_job", "_protocol"))
        ax.set_xlabel("seconds per training job" if job else "seconds per training step (1 thread)")
        ax.set_title(measure + (" (shared machine)" if rows[0].get("shared_machine") else ""))
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _worker(job_json: str) -> None:
    job = json.loads(job_json)
    if job["measure"] == "layout_step":
        record = measure_layout_step(job["variant"], job["iters"])
    elif job["measure"] == "neumann_profile":
        record = measure_neumann_profile(job["checkpoint"])
    elif job["measure"] == "cell_step":
        record = measure_cell_step(job["variant"], job["iters"])
    elif job["measure"] == "core_step":
        record = measure_core_step(job["variant"], job["device"], job["tiny"], job["iters"])
    elif job["measure"] == "pathfinder_step":
        record = measure_pathfinder_step(job["variant"], job["iters"])
    else:
        record = measure_rfpn_step(job["variant"], job["iters"])
    print_record(record)


def main(argv: Sequence[str] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "--worker":
        _worker(argv[1])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--measures", nargs="+", default=["pathfinder_step", "rfpn_step", "layout_step"])
    p.add_argument("--pathfinder-variants", nargs="+", default=list(PATHFINDER_VARIANTS))
    p.add_argument("--layout-variants", nargs="+", choices=LAYOUT_VARIANTS, default=None)
    p.add_argument("--rfpn-variants", nargs="+", default=list(RFPN_VARIANTS))
    p.add_argument("--iters", type=int, default=5, help="timed steps per variant (rfpn: 2)")
    p.add_argument("--shared", action="store_true", help="flag the records shared_machine")
    p.add_argument(
        "--core-device",
        default=None,
        help="measure core_step (the hGRU core alone: eager, CUDA graph, compiled) on this "
        "device instead (the GPU check: tools/cuda_check.sh)",
    )
    p.add_argument("--tiny", action="store_true", help="core_step at tiny sizes (smoke test)")
    p.add_argument("--out", default=str(REPO_ROOT / "docs" / "results" / "speed_cpu"))
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the records already in OUT.json that this run does not measure again",
    )
    p.add_argument("--report-only", action="store_true", help="rewrite OUT.md/.png from OUT.json")
    p.add_argument(
        "--add-protocol",
        metavar="STEM",
        help="add the pathfinder_job records of a finished CPU-protocol run "
        "(docs/results/STEM.json and STEM_summary.json) to OUT.json, then rewrite the report",
    )
    p.add_argument(
        "--add-rfpn-protocol",
        metavar="RUNS_DIR",
        help="add rfpn_protocol records: the recorded C-RBP row of docs/results/"
        "rfpn_cpu_protocol.json and the finished re-run in RUNS_DIR (tools/rfpn_cpu_protocol.py "
        "--out-dir RUNS_DIR --heads crbp ...), then rewrite the report",
    )
    p.add_argument("--rfpn-protocol-variant", default="crbp6-fast", help="the re-run's variant")
    p.add_argument(
        "--neumann-profile",
        nargs="*",
        metavar="CHECKPOINT",
        help="add neumann_profile records: the protocol model at its initial weights and each "
        "trained Pathfinder C-RBP checkpoint given (read only), then rewrite the report",
    )
    p.add_argument(
        "--add-records",
        metavar="JSON",
        help="merge the records of another run of this benchmark (its --out JSON) into OUT.json, "
        "replacing those of the same measure and variant, then rewrite the report",
    )
    p.add_argument(
        "--select",
        nargs="+",
        metavar="MEASURE:VARIANT",
        help="with --add-records: only these records",
    )
    p.add_argument(
        "--rename",
        nargs=3,
        metavar=("MEASURE", "VARIANT", "NEW"),
        help="rename a variant's records in OUT.json (e.g. to keep two measurements of it apart), "
        "then rewrite the report",
    )
    args = p.parse_args(argv)
    if args.rename:
        measure, old, new = args.rename
        with open(args.out + ".json") as f:
            records = json.load(f)
        if not any((r["measure"], r["variant"]) == (measure, old) for r in records):
            p.error(f"--rename: no {measure} record of variant {old!r} in {args.out}.json")
        for r in records:
            if (r["measure"], r["variant"]) == (measure, old):
                r["variant"] = new
        write_results(args.out, records, table(records), plot)
        return 0
    if args.add_records:
        with open(args.out + ".json") as f:
            records = json.load(f)
        with open(args.add_records) as f:
            added = json.load(f)
        if args.select:
            wanted = {tuple(item.split(":", 1)) for item in args.select}
            added = [r for r in added if (r["measure"], r["variant"]) in wanted]
        again = {(r["measure"], r["variant"]) for r in added}
        records = [r for r in records if (r["measure"], r["variant"]) not in again] + added
        write_results(args.out, records, table(records), plot)
        return 0
    if args.neumann_profile is not None:
        for checkpoint in args.neumann_profile:
            if not os.path.isfile(checkpoint):
                p.error(f"--neumann-profile: no such checkpoint {checkpoint}")
        with open(args.out + ".json") as f:
            records = json.load(f)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        machine = {**machine_record("cpu"), "threads": 1}
        added = []
        for checkpoint in [None, *args.neumann_profile]:
            job = json.dumps({"measure": "neumann_profile", "checkpoint": checkpoint})
            record = run_isolated("crbp_d2.benchmarks.speed", ["--worker", job], env=env)
            record.update(shared_machine=bool(args.shared), machine=machine)
            added.append(record)
        records = [r for r in records if r["measure"] != "neumann_profile"] + added
        write_results(args.out, records, table(records), plot)
        return 0
    if args.add_rfpn_protocol:
        with open(args.out + ".json") as f:
            records = json.load(f)
        added = rfpn_protocol_records(
            args.add_rfpn_protocol, args.rfpn_protocol_variant, shared=args.shared
        )
        records = [r for r in records if r["measure"] != "rfpn_protocol"] + added
        write_results(args.out, records, table(records), plot)
        return 0
    if args.report_only or args.add_protocol:
        with open(args.out + ".json") as f:
            records = json.load(f)
        if args.add_protocol:
            added = protocol_job_records(os.path.dirname(args.out), args.add_protocol, args.shared)
            # a protocol run replaces its own records; other runs' (another pair) stay
            again = {(r["measure"], r["variant"], r.get("source")) for r in added}
            records = [
                r for r in records if (r["measure"], r["variant"], r.get("source")) not in again
            ] + added
        write_results(args.out, records, table(records), plot)
        return 0
    for measure in args.measures:
        if measure not in STEP_MEASURES:
            p.error(f"unknown measure {measure!r}; choose from {list(STEP_MEASURES)}")
    jobs = []
    if args.core_device:
        variants = list(CORE_VARIANTS)
        if not args.core_device.startswith("cuda"):  # smoke: no graph capture, no compile
            variants = [v for v in variants if v not in ("crbp20-cudagraph", "crbp20-compiled")]
        for variant in variants:
            jobs.append(
                {"measure": "core_step", "variant": variant, "device": args.core_device,
                 "tiny": args.tiny, "iters": args.iters}
            )  # fmt: skip
        args.measures = []
    for measure in args.measures:
        if measure == "layout_step":
            for variant in args.layout_variants or LAYOUT_VARIANTS:
                jobs.append({"measure": measure, "variant": variant, "iters": min(args.iters, 3)})
            continue
        if measure == "cell_step":
            for variant in CELL_STEP_VARIANTS:
                jobs.append({"measure": measure, "variant": variant, "iters": 6 * args.iters})
            continue
        table_ = PATHFINDER_VARIANTS if measure == "pathfinder_step" else RFPN_VARIANTS
        variants = args.pathfinder_variants if measure == "pathfinder_step" else args.rfpn_variants
        for variant in variants:
            if variant not in table_:
                p.error(f"unknown {measure} variant {variant!r}; choose from {list(table_)}")
            iters = args.iters if measure == "pathfinder_step" else min(args.iters, 2)
            jobs.append({"measure": measure, "variant": variant, "iters": iters})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    machine = {**machine_record(args.core_device or "cpu"), "threads": 1}
    records: List[Record] = []
    if args.merge and os.path.isfile(args.out + ".json"):
        with open(args.out + ".json") as f:
            again = {(job["measure"], job["variant"]) for job in jobs}
            records = [r for r in json.load(f) if (r["measure"], r["variant"]) not in again]
    for job in jobs:
        record = run_isolated("crbp_d2.benchmarks.speed", ["--worker", json.dumps(job)], env=env)
        record.update(shared_machine=bool(args.shared), machine=machine)
        records.append(record)
        print(f"{record['measure']} {record['variant']}: {record['seconds']:.3f} s", flush=True)
        write_results(args.out, records, table(records), plot)  # partial results survive
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
