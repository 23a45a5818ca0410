"""The CPU protocol's and the CUDA check's library parts (the full runs need minutes or a GPU)."""

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from crbp_d2.contours.generator import preset
from crbp_d2.pathfinder.data.datasets import (
    PathfinderOnTheFly,
    PathfinderTransform,
    build_dataset,
)
from crbp_d2.pathfinder.evaluation.baselines import flood_fill, marker_only
from crbp_d2.pathfinder.evaluation.metrics import SegmentationMeter
from crbp_d2.pathfinder.experiments import cpu_protocol, cuda_check
from crbp_d2.pathfinder.train.loop import Trainer

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")


def test_cuda_check_memory_run_uses_the_trainer_step(monkeypatch):
    calls = []
    original = Trainer.train_step

    def counting(self, image, label, total_iters=0):
        calls.append(tuple(image.shape))
        return original(self, image, label, total_iters)

    monkeypatch.setattr(Trainer, "train_step", counting)
    cfg = cuda_check.check_config("crbp", 2, "cpu", tiny=True)
    batch = next(iter(DataLoader(build_dataset(cfg, "test", size=4), batch_size=4)))
    result = cuda_check.peak_memory("crbp", 2, "cpu", batch, tiny=True)
    assert calls == [(4, 1, 48, 48)] * 2  # two optimizer steps on the one batch
    assert result["method"] == "crbp" and result["batch"] == 4 and math.isfinite(result["loss"])


def test_cpu_protocol_baselines_are_per_image_meter_scores():
    dataset = PathfinderOnTheFly(preset(9), 12, 3, PathfinderTransform(64, flip=False))
    radius = 5 * 64 / 300
    rows = cpu_protocol.baseline_records(dataset, radius, 9)
    # by hand: every image is its own batch of the meter; the best radius has the best pooled IoU
    meters = {"marker_only": SegmentationMeter()}
    meters.update({r: SegmentationMeter() for r in cpu_protocol.FLOOD_RADII})
    for image, label in (dataset[i] for i in range(len(dataset))):
        img = image[0].numpy()
        meters["marker_only"].update(torch.from_numpy(marker_only(img, radius))[None], label[None])
        for r in cpu_protocol.FLOOD_RADII:
            meters[r].update(torch.from_numpy(flood_fill(img, r, radius))[None], label[None])
    summaries = {k: m.summary() for k, m in meters.items()}
    best = max(cpu_protocol.FLOOD_RADII, key=lambda r: summaries[r]["iou"])
    marker, flood = rows
    assert marker["method"] == "marker_only" and flood["method"] == "flood_fill"
    assert flood["flood_fill_radius"] == best
    for row, expected in ((marker, summaries["marker_only"]), (flood, summaries[best])):
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-12), key
        assert row["test_length"] == 9 and row["eval_steps"] is None


def _record(method, eval_steps, iou, train_steps=None):
    return {
        "method": method,
        "eval_steps": eval_steps,
        "train_steps": train_steps,
        "iou": iou,
        "mean_image_iou": iou + 0.01,
    }


def test_cpu_protocol_checks_and_table(tmp_path):
    records = [
        _record("crbp", 20, 0.50, 20),
        _record("crbp", 60, 0.49, 20),
        _record("bptt", 6, 0.50, 6),
        _record("bptt", 18, 0.40, 6),
        _record("rbp", 20, 0.48, 20),
        _record("rbp", 60, 0.47, 20),
        _record("marker_only", None, 0.38),
        _record("flood_fill", None, 0.62),
    ]
    checks = cpu_protocol.protocol_checks(records, {"C-RBP": 20, "BPTT": 6})
    assert checks["crbp_minus_marker_only"] == pytest.approx(0.12)
    assert checks["crbp_learns (>= +0.10 over marker-only)"] is True
    assert checks["crbp_above_flood_fill"] is False
    assert checks["crbp_stable (|change| <= 0.02)"] is True
    assert checks["bptt_degrades (loss >= 0.05)"] is True
    stem = str(tmp_path / cpu_protocol.STEM)
    json.dump(records, open(stem + ".json", "w"))
    machine = {"cpu": "CPU", "cores": 2, "torch": "2.x"}
    summary = {"test_images": 8, "train_wall_seconds": 60, "eval_wall_seconds": 6}
    json.dump(dict(summary, machine=machine), open(stem + "_summary.json", "w"))
    lines = cpu_protocol.write_markdown(stem).splitlines()
    assert lines[0] == "| method | N | IoU at N | IoU at 3N | change | mean per-image IoU at N |"
    assert lines[2] == "| C-RBP | 20 | 0.500 | 0.490 | -0.010 | 0.510 |"
    assert lines[4] == "| BPTT | 6 | 0.500 | 0.400 | -0.100 | 0.510 |"
    assert lines[5].startswith("| flood fill (baseline) |") and "0.620" in lines[5]
    assert "8 test images" in lines[-1] and "training 1.0 min" in lines[-1]
    assert open(stem + ".md").read().splitlines() == lines


def test_cpu_protocol_jobs_for_other_methods():
    assert cpu_protocol.slots_for(["crbp", "bptt", "rbp"]) == cpu_protocol.SLOTS
    assert cpu_protocol.slots_for(["crbp", "cjfb"]) == (("crbp",), ("cjfb",))
    with pytest.raises(ValueError, match=r"no CPU-protocol config for \['magic'\]"):
        cpu_protocol.slots_for(["crbp", "magic"])
    for method in cpu_protocol.LABELS:  # every method has its config
        assert (cpu_protocol.PROTOCOL_CONFIGS / f"{method}.yaml").is_file(), method
