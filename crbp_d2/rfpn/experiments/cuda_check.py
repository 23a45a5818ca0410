"""R-FPN check for a CUDA machine: the Detectron2 part of ``tools/cuda_check.sh``.

1. Memory of one Panoptic FPN training step with the R-FPN mask head trained by BPTT-N vs
   C-RBP-N for a few N (default 5, 10, 20; the paper's R-50 config, 512 px, batch 2, 16
   instances per image), all in this process, one variant after the other.
2. A few training iterations of R-FPN C-RBP with ``SOLVER.AMP.ENABLED True`` (the step of
   Detectron2's AMPTrainer: autocast + GradScaler) and, for comparison, in float32.

What ``memory_bytes`` holds is named by ``memory_measure``:

- CUDA: ``cuda_max_memory_allocated``, the peak of ``torch.cuda.max_memory_allocated`` over the
  timed steps (model, optimizer state and batch included; ``step_bytes`` subtracts what was
  allocated before the step);
- CPU (no allocator statistics): ``saved_tensor_bytes``, the bytes autograd saves for backward in
  one training step (``torch.autograd.graph.saved_tensors_hooks``; each storage counted once,
  :class:`crbp_d2.utils.bench.SavedStorageBytes`, ``saved_counter`` says so): the part of the
  peak that grows with BPTT's steps. ``step_bytes`` is None there.

``saved_bytes`` is that count on both devices, ``mask_head_saved_bytes`` its part saved while
the mask head's forward runs (what BPTT's steps add to). AMP on a CPU: ``SOLVER.AMP.ENABLED``
is CUDA only (Detectron2 v0.6's AMPTrainer; :func:`crbp_d2.rfpn.config.check_device` refuses it),
so on a CPU the same loop runs bfloat16 autocast with a disabled GradScaler, and the report says
so (``amp.dtype``, ``amp.config_amp_enabled``, ``amp.note``).

Uses only torch >= 2.1 APIs. ``RFPNCheck.tiny()`` is the CPU smoke test's size (seconds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ...utils import atomic_write_json, atomic_write_text, device_description, pyplot, write_plot
from ...utils.bench import SAVED_COUNTER, SavedStorageBytes
from ...utils.machine import grad_scaler, machine_record
from ...utils.report import markdown_table
from .benchmark import DEFAULT_CONFIG, RFPNBenchmark, synthetic_batch, variant_opts

__all__ = [
    "AMP_VARIANT",
    "REPORT_NAME",
    "RFPNCheck",
    "TINY_CONFIG",
    "amp_training",
    "check_settings",
    "memory_record",
    "plot_rfpn_check",
    "report_table",
    "run_rfpn_cuda_check",
]

Record = Dict[str, object]
Log = Callable[[str], None]
REPORT_NAME = "rfpn_cuda.json"
TINY_CONFIG = str(
    Path(__file__).resolve().parents[3] / "configs/quick/R-FPN-R50-CRBP-synthetic-test.yaml"
)
AMP_VARIANT = "CRBP-{steps}"


@dataclass(frozen=True)
class RFPNCheck:
    """What the check measures. ``device`` None means CUDA if available."""

    config_file: str = DEFAULT_CONFIG
    size: int = 512
    batch: int = 2
    instances: int = 16
    steps: Tuple[int, ...] = (5, 10, 20)
    methods: Tuple[str, ...] = ("BPTT", "CRBP")
    iters: int = 10  # timed steps per memory variant (after one warm-up step); 2 until Dec 2026
    amp_steps: int = 10  # recurrent steps of the C-RBP model trained with AMP
    amp_iters: int = 20  # training iterations, with AMP and in float32
    lr: float = 1e-3
    # Detectron2's per-parameter gradient-norm clipping in the AMP / float32 training (0: none):
    # the paper config from random init (FrozenBN) starts at a loss of ~1,100 and diverges
    # within a few unclipped SGD steps at lr 1e-3 (seen on an H200).
    clip_norm: float = 1.0
    device: Optional[str] = None
    opts: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 32 or self.batch < 1 or self.instances < 1 or self.iters < 1:
            raise ValueError("size >= 32, batch >= 1, instances >= 1 and iters >= 1 are required")
        if not self.steps or min(self.steps) < 1 or self.amp_steps < 1 or self.amp_iters < 1:
            raise ValueError("steps, amp_steps and amp_iters must be >= 1")

    @classmethod
    def tiny(cls, **changes) -> "RFPNCheck":
        """The CPU smoke test: the 64 px synthetic-test config, N = 2 and 4, a few steps."""
        tiny = dict(config_file=TINY_CONFIG, size=64, batch=1, instances=2, steps=(2, 4))
        tiny.update(iters=1, amp_steps=2, amp_iters=2)
        return dataclasses.replace(cls(**tiny), **changes)

    def resolved_device(self) -> str:
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def variants(self) -> List[str]:
        return [f"{method}-{n}" for n in self.steps for method in self.methods]


def _variant_config(settings: RFPNCheck, variant: str, extra: Tuple[str, ...] = ()):
    from ..config import check_device, get_crbp_cfg

    device = settings.resolved_device()
    opts = [*settings.opts, *variant_opts(variant), "MODEL.DEVICE", device, "MODEL.WEIGHTS", ""]
    cfg = get_crbp_cfg(settings.config_file, [*opts, *extra])
    check_device(cfg)
    return cfg


def check_settings(settings: RFPNCheck) -> None:
    """Build every variant's config (nothing else) so that a bad config file, key, method or
    device fails before the first measurement: ``FileNotFoundError``, ``KeyError`` or
    ``ValueError`` with one line."""
    for variant in settings.variants() + [AMP_VARIANT.format(steps=settings.amp_steps)]:
        _variant_config(settings, variant)


def _build(settings: RFPNCheck, variant: str, extra: Tuple[str, ...] = ()):
    """Config, model (seed 0, train mode) and synthetic batch of ``variant``."""
    import torch
    from detectron2.modeling import build_model

    cfg = _variant_config(settings, variant, extra)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    shape = RFPNBenchmark(size=settings.size, batch=settings.batch, instances=settings.instances)
    batch = synthetic_batch(
        shape, cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    )
    return cfg, model, batch


class _HeadSavedBytes(SavedStorageBytes):
    """:class:`SavedStorageBytes` that also counts, in ``head``, the bytes saved while
    ``module``'s forward runs (the mask head's own share of the step's saved storage, each
    storage once)."""

    def __init__(self, module) -> None:
        super().__init__()
        self._head = SavedStorageBytes()
        self._inside = False
        module.register_forward_pre_hook(lambda *_: setattr(self, "_inside", True))
        module.register_forward_hook(lambda *_: setattr(self, "_inside", False))

    @property
    def head(self) -> int:
        return self._head.total

    def _pack(self, tensor):
        if self._inside:
            self._head.add(tensor)
        return super()._pack(tensor)


def _free(cuda: bool) -> None:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def memory_record(settings: RFPNCheck, variant: str) -> Record:
    """One warm-up training step (counting the bytes saved for backward), then ``iters`` timed
    steps (SGD, lr 0: every step does the same work); the record of ``variant``."""
    import torch
    from detectron2.utils.events import EventStorage

    from .benchmark import parse_variant

    method, steps = parse_variant(variant)
    _, model, batch = _build(settings, variant)
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    rois: List[int] = []
    model.roi_heads.mask_head.register_forward_pre_hook(
        lambda module, inputs: rois.append(int(inputs[0].shape[0]))
    )
    losses: List[float] = []

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss_dict = model(batch)
        total = sum(loss_dict.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        losses.append(float(total.detach()))
        return time.perf_counter() - start

    record: Record = {"variant": variant, "method": method, "steps": steps}
    saved = _HeadSavedBytes(model.roi_heads.mask_head)
    try:
        with EventStorage():
            with saved.counting():
                step()  # warm-up: also allocates the momentum buffers
            if cuda:
                _free(cuda)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            times = [step() for _ in range(settings.iters)]
    except torch.cuda.OutOfMemoryError:
        total = torch.cuda.get_device_properties(device).total_memory
        record["error"] = f"out of memory (card has {total} bytes)"
    if "error" in record:
        model = optimizer = None
        _free(cuda)
        return record
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    record.update(
        {
            "memory_measure": _measure(cuda),
            "memory_bytes": int(peak if cuda else saved.total),
            "saved_bytes": int(saved.total),
            "saved_counter": SAVED_COUNTER,
            "mask_head_saved_bytes": int(saved.head),
            "peak_allocated_bytes": None if peak is None else int(peak),
            "step_bytes": None if peak is None else int(peak - before),
            "seconds_per_iter": statistics.median(times),
            "loss": losses[-1],
            "mask_rois": statistics.mean(rois),
        }
    )
    model = optimizer = None  # the step's closure holds them too
    _free(cuda)
    return record


def _measure(cuda: bool) -> str:
    return "cuda_max_memory_allocated" if cuda else "saved_tensor_bytes"


def amp_training(settings: RFPNCheck, amp: bool, log: Log = print) -> Record:
    """``amp_iters`` training iterations of C-RBP-``amp_steps`` on the synthetic batch (SGD at
    ``lr``, momentum 0.9). With ``amp`` the step is Detectron2's AMPTrainer's: autocast, then
    the GradScaler's scale / step / update; on CUDA the config sets ``SOLVER.AMP.ENABLED True``
    and the dtype is float16, on a CPU (where that key is refused) bfloat16 with the scaler
    disabled."""
    import torch
    from detectron2.utils.events import EventStorage

    device = settings.resolved_device()
    cuda = torch.device(device).type == "cuda"
    config_amp = amp and cuda
    extra = ("SOLVER.AMP.ENABLED", "True") if config_amp else ()
    variant = AMP_VARIANT.format(steps=settings.amp_steps)
    cfg, model, batch = _build(settings, variant, extra)
    dtype = (torch.float16 if cuda else torch.bfloat16) if amp else torch.float32
    scaler = grad_scaler(enabled=amp and cuda)
    optimizer_class = torch.optim.SGD
    if settings.clip_norm > 0:  # as Detectron2's SOLVER.CLIP_GRADIENTS: clips after unscaling
        from detectron2.solver.build import maybe_add_gradient_clipping

        clip_cfg = cfg.clone()
        clip_cfg.defrost()
        clip_cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
        clip_cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
        clip_cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = settings.clip_norm
        optimizer_class = maybe_add_gradient_clipping(clip_cfg, torch.optim.SGD)
    optimizer = optimizer_class(model.parameters(), lr=settings.lr, momentum=0.9)
    logits_dtypes: List[str] = []
    model.roi_heads.mask_head.predictor.register_forward_hook(
        lambda module, inputs, output: logits_dtypes.append(str(output.dtype).split(".")[-1])
    )
    losses: List[float] = []
    skipped = 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    diverged: Optional[str] = None
    with EventStorage():
        for iteration in range(settings.amp_iters):
            autocast = torch.autocast(torch.device(device).type, dtype=dtype) if amp else None
            try:
                with autocast or contextlib.nullcontext():
                    loss_dict = model(batch)
            except FloatingPointError as error:  # Detectron2's RPN check on non-finite boxes
                diverged = f"iteration {iteration}: {error}"
                log(f"{'AMP' if amp else 'float32'}: diverged at {diverged}")
                break
            total = sum(loss_dict.values())
            optimizer.zero_grad(set_to_none=True)
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            if scaler.is_enabled() and scaler.get_scale() < scale:
                skipped += 1  # inf / nan gradients: the scaler skipped this step
            losses.append(float(total.detach()))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    ran = len(losses)  # iterations with a loss (all of them unless diverged)
    if not losses:
        losses = [math.nan]
    finite = [x for x in losses if math.isfinite(x)]
    record: Record = {
        "variant": variant,
        "amp": amp,
        "dtype": str(dtype).replace("torch.", ""),
        "config_amp_enabled": bool(cfg.SOLVER.AMP.ENABLED),
        "grad_scaler": scaler.is_enabled(),
        "final_scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
        "skipped_steps": skipped,
        "iterations": settings.amp_iters,
        "iterations_run": ran,
        "diverged": diverged,
        "clip_norm": settings.clip_norm,
        "seconds_per_iter": seconds / max(ran, 1),
        "losses": losses,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "all_finite": diverged is None and len(finite) == len(losses),
        "mask_logits_dtype": logits_dtypes[-1] if logits_dtypes else None,
        "peak_allocated_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
    }
    if amp and not cuda:
        record["note"] = (
            "CPU: SOLVER.AMP.ENABLED is CUDA only (refused when the config is built), so this ran "
            "the same step with bfloat16 autocast and the GradScaler disabled"
        )
    log(
        f"{'AMP' if amp else 'float32'} {variant}: {settings.amp_iters} iterations, "
        f"{record['seconds_per_iter']:.3f} s/iter, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"mask logits {record['mask_logits_dtype']}"
    )
    del model, optimizer
    _free(cuda)
    return record


def report_table(report: Record) -> str:
    """Markdown: BPTT-N vs C-RBP-N memory per N, then the AMP vs float32 training rows."""
    by_variant = {r["variant"]: r for r in report["memory"]}
    methods = list(report["settings"]["methods"])
    header = ["N"] + [f"{m} memory (MiB)" for m in methods]
    counted = all(
        r.get("saved_counter") == SAVED_COUNTER for r in report["memory"] if "error" not in r
    )  # records before the storage count hold the old count: its columns are left out
    step_peak = any(r.get("step_bytes") is not None for r in report["memory"])  # CUDA only
    if step_peak:
        header += [f"{m} step peak (MiB)" for m in methods]
    if counted:
        header += [f"{m} mask head saved (MiB)" for m in methods]
    header += [f"{m} s / iter" for m in methods]
    if len(methods) == 2:
        header.append(f"memory {methods[1]} / {methods[0]}")
    rows = []

    def cell(record, key: str, scale: float = 2**-20, digits: int = 1) -> str:
        if record is None or "error" in record:
            return "-"
        return f"{record[key] * scale:,.{digits}f}"

    for n in report["settings"]["steps"]:
        found = [by_variant.get(f"{m}-{n}") for m in methods]
        row = [n] + [cell(r, "memory_bytes") for r in found]
        if step_peak:
            row += [cell(r, "step_bytes") for r in found]
        if counted:
            row += [cell(r, "mask_head_saved_bytes") for r in found]
        row += [cell(r, "seconds_per_iter", 1.0, 3) for r in found]
        if len(methods) == 2:
            a, b = found
            ok = a and b and "error" not in a and "error" not in b
            row.append(f"{b['memory_bytes'] / a['memory_bytes']:.2f}x" if ok else "-")
        rows.append(row)
    text = markdown_table(header, rows)
    training = [r for r in (report.get("amp"), report.get("fp32")) if r]
    if training:
        text += "\n\n" + markdown_table(
            [
                "training",
                "dtype",
                "GradScaler",
                "steps skipped (final scale)",
                "s / iter",
                "first loss",
                "last loss",
                "finite",
            ],
            [
                [
                    f"{r['variant']} {'AMP' if r['amp'] else 'float32'}",
                    r["dtype"],
                    "yes" if r["grad_scaler"] else "no",
                    (
                        f"{r['skipped_steps']} of {r['iterations']} ({r['final_scale']:g})"
                        if r["grad_scaler"]
                        else "-"
                    ),
                    f"{r['seconds_per_iter']:.3f}",
                    f"{r['first_loss']:.3f}",
                    f"{r['last_loss']:.3f}",
                    "yes" if r["all_finite"] else "NO",
                ]
                for r in training
            ],
        )
    s = report["settings"]
    text += (
        f"\n\nMeasured on {report['device']} with torch {report['torch']}: one Panoptic FPN "
        f"training step, {os.path.basename(s['config_file'])}, {s['size']} px, batch "
        f"{s['batch']}, {s['instances']} instances per image (`tools/cuda_rfpn_check.py`; "
        f"memory = {report['memory_measure']}"
        + ("; step peak = that peak less what was allocated before the step" if step_peak else "")
        + (
            "; mask head saved = the bytes saved for backward during the mask head's forward, "
            "each storage once"
            if counted
            else "; the mask head's saved-for-backward bytes are not shown: this run's "
            "`mask_head_saved_bytes` (kept in the JSON) is the old count, every saved "
            "reference summed, which double-counts a storage saved by several operations; "
            "awaiting a re-run with the storage count"
        )
        + f"; s / iter: the median of {s['iters']} timed steps after one warm-up"
        + (", too few to be stable" if s["iters"] < 5 else "")
        + ")"
    )
    if training:
        clip = s.get("clip_norm", 0)
        clipped = f", each parameter's gradient norm clipped to {clip:g}" if clip else ""
        text += f"; training: SGD at lr {s['lr']:g}, momentum 0.9{clipped}, from random init"
    text += ".\n"
    return text


def _repo_relative(path: str) -> str:
    """``path`` relative to the checkout when inside it (records hold no absolute path)."""
    root = str(Path(__file__).resolve().parents[2])
    full = os.path.abspath(path)
    return os.path.relpath(full, root) if full.startswith(root + os.sep) else os.path.basename(full)


def rfpn_cuda_markdown(records: Sequence[Record], name: str = "rfpn_cuda") -> str:
    """``docs/results/NAME.md`` of the check's report (one dict)."""
    return report_table(records[0])


def plot_rfpn_check(report: Record, path: str) -> None:
    """Memory and seconds per step vs N, one line per method (PNG at ``path``)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=120)
    for method in report["settings"]["methods"]:
        rows = [r for r in report["memory"] if r["method"] == method.lower() and "error" not in r]
        n = [r["steps"] for r in rows]
        axes[0].plot(n, [r["memory_bytes"] / 2**20 for r in rows], "o-", label=method)
        axes[1].plot(n, [r["seconds_per_iter"] for r in rows], "o-", label=method)
    axes[0].set_ylabel(f"MiB ({report['memory_measure']})")
    axes[1].set_ylabel("seconds per training step")
    for ax in axes:
        ax.set_xlabel("recurrent steps N")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"R-FPN BPTT-N vs C-RBP-N, {report['device']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def run_rfpn_cuda_check(settings: RFPNCheck, out: str, log: Log = print) -> Record:
    """The memory variants, then the AMP and float32 training runs. ``out`` is the JSON file;
    the report is rewritten after each part (a run stopped by a time limit keeps what it
    measured); at the end ``STEM.md`` (:func:`report_table`) and ``STEM.png`` are written beside
    it."""
    import torch

    if not os.path.isfile(settings.config_file):
        raise FileNotFoundError(f"config file not found: {settings.config_file}")
    device = settings.resolved_device()
    cuda = torch.device(device).type == "cuda"
    report: Record = {
        "device": device_description(device),
        "device_type": torch.device(device).type,
        "torch": torch.__version__,
        "memory_measure": _measure(cuda),
        "total_memory_bytes": (
            torch.cuda.get_device_properties(device).total_memory if cuda else None
        ),
        "settings": {
            **dataclasses.asdict(settings),
            "config_file": _repo_relative(settings.config_file),
        },
        **{k: v for k, v in machine_record(device).items() if k not in ("device", "torch")},
        "memory": [],
        "amp": None,
        "fp32": None,
        "seconds": {},
    }
    log(f"device: {report['device']} (memory measure: {report['memory_measure']})")
    tic = time.time()
    for variant in settings.variants():
        record = memory_record(settings, variant)
        report["memory"].append(record)
        if "error" in record:
            log(f"{variant}: {record['error']}")
        else:
            log(
                f"{variant}: {record['memory_bytes'] / 2**20:,.1f} MiB, "
                f"{record['seconds_per_iter']:.3f} s/iter, {record['mask_rois']:.0f} mask RoIs"
            )
        report["seconds"]["memory"] = time.time() - tic
        atomic_write_json(report, out)
    for key, amp in (("amp", True), ("fp32", False)):
        tic = time.time()
        report[key] = amp_training(settings, amp, log)
        report["seconds"][key] = time.time() - tic
        atomic_write_json(report, out)
    stem = os.path.splitext(out)[0]
    atomic_write_text(stem + ".md", report_table(report))
    write_plot(report, plot_rfpn_check, stem + ".png")
    log(f"wrote {out}, {stem}.md and {stem}.png")
    return report
