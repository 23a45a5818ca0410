"""Is a resumed Detectron2 run the uninterrupted one, on this device?

Trains the tiny test config (``configs/quick/R-FPN-R50-CRBP-synthetic-test.yaml``, ``SEED 0``)
three times for ``iters`` iterations: twice without a stop (A, B), and once stopped after
``stop_at`` iterations and resumed with ``--resume`` (C). It compares the final weights and
buffers: A vs B says whether the device's kernels repeat themselves, A vs C whether resuming
changes anything beyond that. On a CPU both are bit-exact (``tests/test_d2_resume.py`` checks more
cases); on CUDA, kernels with atomic adds (RoIAlign's backward, index_add) need not repeat.

    python tools/rfpn_resume_check.py --device cuda --out OUT_DIR/resume_cuda.json

Writes the JSON record and a Markdown table beside it (``.md``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

import torch

from ...utils import atomic_write_json, atomic_write_text, device_description
from ...utils.report import markdown_table
from ...utils.safe_load import load_torch_file

CONFIG = str(
    Path(__file__).resolve().parents[3] / "configs" / "quick" / "R-FPN-R50-CRBP-synthetic-test.yaml"
)


def _train(work: str, name: str, device: str, iters: int, resume: bool = False) -> Dict:
    from ..train.arguments import parse_train_args
    from ..train.trainer import train_or_evaluate

    out = os.path.join(work, name)
    argv = ["--config-file", CONFIG, *(["--resume"] if resume else [])]
    argv += ["MODEL.DEVICE", device, "SEED", "0", "SOLVER.MAX_ITER", str(iters)]
    argv += ["SOLVER.CHECKPOINT_PERIOD", "100000", "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    train_or_evaluate(parse_train_args(argv))
    checkpoint = load_torch_file(os.path.join(out, "model_final.pth"), map_location="cpu")
    return checkpoint["model"]


def compare(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> Dict[str, object]:
    """How two state dicts differ: bit-equal or not, tensors differing, the largest absolute
    difference and the largest one relative to the tensor's largest magnitude (with names)."""
    rows = []
    for key, x in a.items():
        y = b[key]
        if not x.is_floating_point() or x.numel() == 0:
            continue
        gap = (x.double() - y.double()).abs().max().item()
        rows.append((gap, gap / max(x.double().abs().max().item(), 1e-12), key))
    largest, relative = max(rows), max(rows, key=lambda row: row[1])
    return {
        "bit_equal": all(torch.equal(x, b[k]) for k, x in a.items()),
        "tensors": len(rows),
        "tensors_differing": sum(row[0] > 0 for row in rows),
        "max_abs": largest[0],
        "max_abs_tensor": largest[2],
        "max_rel": relative[1],
        "max_rel_tensor": relative[2],
    }


def run_resume_determinism(
    out: str, device: str, iters: int = 6, stop_at: int = 3, work: Optional[str] = None
) -> Dict[str, object]:
    """Train A, B (``iters`` iterations) and C (``stop_at``, then resumed to ``iters``) on
    ``device``; write the record to ``out`` (JSON) and its table to ``out`` with ``.md``."""
    if not 0 < stop_at < iters:
        raise ValueError(f"need 0 < stop_at < iters, got stop_at={stop_at}, iters={iters}")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        a = _train(tmp, "a", device, iters)
        b = _train(tmp, "b", device, iters)
        _train(tmp, "c", device, stop_at)
        c = _train(tmp, "c", device, iters, resume=True)
    record = {
        "device": device_description(device),
        "torch": torch.__version__,
        "config": os.path.basename(CONFIG),
        "iterations": iters,
        "stopped_at": stop_at,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "uninterrupted_vs_uninterrupted": compare(a, b),
        "uninterrupted_vs_resumed": compare(a, c),
    }
    atomic_write_json(record, out)
    cases = (
        ("two uninterrupted runs", record["uninterrupted_vs_uninterrupted"]),
        (f"uninterrupted vs stopped at {stop_at}, resumed", record["uninterrupted_vs_resumed"]),
    )
    rows = [
        [
            name,
            "yes" if r["bit_equal"] else "no",
            f"{r['tensors_differing']} of {r['tensors']}",
            f"{r['max_abs']:.3g} ({r['max_abs_tensor']})",
            f"{r['max_rel']:.3g} ({r['max_rel_tensor']})",
        ]
        for name, r in cases
    ]
    table = markdown_table(
        ["final weights and buffers", "bit-equal", "tensors differing", "max abs diff",
         "max diff / tensor max"], rows,
    )  # fmt: skip
    atomic_write_text(
        os.path.splitext(out)[0] + ".md",
        f"{table}\n\nMeasured on {record['device']} with torch {record['torch']}: "
        f"{record['config']}, SEED 0, {iters} iterations (`python "
        "tools/rfpn_resume_check.py`).\n",
    )
    return record
