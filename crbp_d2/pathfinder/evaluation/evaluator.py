"""Running a Pathfinder model over a test loader and scoring it at one or more step counts.

Recurrent models run once to the largest step count asked for and are read out at every count
(:meth:`~crbp_d2.pathfinder.modeling.RecurrentSegmenter.logits_at_steps`); the feed-forward
controls have one output. Scores come from :class:`~.metrics.SegmentationMeter`.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from ..dist import autocast, unwrap
from ..losses import segmentation_loss
from ..modeling import RecurrentSegmenter
from .metrics import SegmentationMeter

Device = Union[str, torch.device]
METRIC_KEYS = ("iou", "mean_image_iou", "f1", "paper_f1", "paper_iou", "images")


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: Iterable,
    device: Device,
    steps: Sequence[Optional[int]] = (None,),
    loss_kind: str = "focal",
    gamma: float = 2.0,
    spectral_iters: int = 0,
    amp_dtype: Optional[torch.dtype] = None,
) -> Dict[Optional[int], Dict[str, float]]:
    """Metrics of ``model`` on ``loader`` ((B, 1, H, W) images, (B, H, W) labels) at each step
    count in ``steps`` (None: the model's test steps). Returns {steps: {iou, mean_image_iou, f1,
    paper_f1, paper_iou, images, test_loss, steps, and for recurrent models test_residual
    (||h_t - h_{t-1}|| / ||h_t|| at that count t; nan at 0) and spectral_radius (of dF/dh on
    4 images of the first batch; nan when ``spectral_iters`` is 0)}}, keyed by the counts as
    given except None -> the test steps."""
    device = torch.device(device)
    model = unwrap(model)
    was_training = model.training
    model.eval()
    recurrent = getattr(model, "recurrent", False)
    default_steps = model.engine.test_steps if recurrent else None
    wanted = [default_steps if s is None else s for s in steps]
    meters = {s: SegmentationMeter() for s in wanted}
    losses: Dict[Optional[int], List[float]] = {s: [] for s in wanted}
    residuals: Dict[Optional[int], List[float]] = {s: [] for s in wanted}
    radius = float("nan")
    for batch_index, (image, label) in enumerate(loader):
        image, label = image.to(device), label.to(device)
        with autocast(device, amp_dtype):
            if recurrent:
                logits_by_step = model.logits_at_steps(image, wanted)
                for s in wanted:
                    residuals[s].append(model.last_residuals[s])
            else:
                logits_by_step = {None: model(image).logits}
        for s in wanted:
            logits = logits_by_step[s]
            meters[s].update(logits, label)
            losses[s].append(float(segmentation_loss(logits, label, loss_kind, gamma)))
        if batch_index == 0 and recurrent and spectral_iters > 0:
            radius = model.spectral_radius(image[:4], iterations=spectral_iters)
    results: Dict[Optional[int], Dict[str, float]] = {}
    for s in wanted:
        summary = meters[s].summary()
        summary["test_loss"] = sum(losses[s]) / max(len(losses[s]), 1)
        summary["steps"] = float(s) if s is not None else float("nan")
        if recurrent:
            summary["test_residual"] = sum(residuals[s]) / max(len(residuals[s]), 1)
            summary["spectral_radius"] = radius
        results[s] = summary
    model.train(was_training)
    return results


def evaluate_at(
    model: nn.Module, loader: Iterable, steps: Optional[int] = None, device: Device = "cpu"
) -> Dict[str, float]:
    """The metrics (``METRIC_KEYS``) of ``model`` on ``loader`` after ``steps`` steps (None: the
    model's own; ignored by the feed-forward controls)."""
    if not isinstance(model, RecurrentSegmenter):
        steps = None
    (summary,) = evaluate_model(model, loader, device, [steps]).values()
    return {key: summary[key] for key in METRIC_KEYS}


def iou_over_steps(
    model: RecurrentSegmenter, loader: Iterable, max_steps: int, device: Device = "cpu"
) -> List[Dict[str, float]]:
    """The metrics of the readout after t = 0..max_steps steps: [{iou, ..., steps: t}]."""
    if not isinstance(model, RecurrentSegmenter):
        raise ValueError("IoU over steps needs a recurrent model (hgru or convlstm)")
    results = evaluate_model(model, loader, device, range(max_steps + 1))
    return [
        dict({key: results[t][key] for key in METRIC_KEYS}, steps=float(t))
        for t in range(max_steps + 1)
    ]
