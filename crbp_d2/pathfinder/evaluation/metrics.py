"""Segmentation metrics for Pathfinder: pooled IoU, mean per-image IoU, F1 and the paper's IoU.

The prediction is the arg-max over the two logits (contour probability > 0.5). The paper's number
is the authors' metric: F1 = 2 TP / (#true + #predicted) pooled over each test batch, averaged
over batches, converted with IoU = F1 / (2 - F1). The trainer, the analyses and the non-learned
baselines all score with :class:`SegmentationMeter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch
from torch import Tensor


def f1_to_iou(f1: float) -> float:
    """The paper's conversion IoU = F1 / (2 - F1) (exact for pooled counts)."""
    return f1 / (2.0 - f1)


def two_class_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(dim=1)`` of (B, 2, H, W) logits as a (B, H, W) bool map, ties and NaNs
    included (argmax takes the first maximum, and NaN as the maximum). A comparison instead of
    argmax: argmax over a 2-long dimension was ~50x slower on CPU (16 x 2 x 180 x 180, 1 thread)
    and an eighth of a 60-step evaluation's time."""
    background, contour = logits[:, 0], logits[:, 1]
    return (contour > background) | (contour.isnan() & ~background.isnan())


def confusion_counts(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-image (TP, FP, FN) for boolean/0-1 (B, H, W) maps: a (B, 3) int64 tensor."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
        )
    pred = prediction.bool().flatten(1)
    true = target.bool().flatten(1)
    tp = (pred & true).sum(1)
    fp = (pred & ~true).sum(1)
    fn = (~pred & true).sum(1)
    return torch.stack([tp, fp, fn], dim=1).long()


def per_image_iou(counts: Tensor) -> Tensor:
    """(B, 3) counts -> (B,) IoU = TP / (TP + FP + FN); 1 when both maps are empty."""
    tp, fp, fn = counts.double().unbind(1)
    union = tp + fp + fn
    return torch.where(union > 0, tp / union.clamp_min(1), torch.ones_like(tp))


@dataclass
class SegmentationMeter:
    """Accumulates counts over test batches; :meth:`summary` gives every metric.

    Metrics: ``iou`` (pooled over all pixels of all images), ``mean_image_iou``, ``f1`` (pooled),
    ``paper_f1`` (mean over batches of the per-batch pooled F1) and ``paper_iou`` =
    paper_f1 / (2 - paper_f1).
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    image_ious: List[float] = field(default_factory=list)
    batch_f1: List[float] = field(default_factory=list)

    def update(self, logits_or_prediction: Tensor, target: Tensor) -> None:
        """Add a batch: (B, 2, H, W) logits or a (B, H, W) 0/1 prediction, and (B, H, W) labels."""
        pred = logits_or_prediction
        if pred.dim() == 4:
            pred = two_class_argmax(pred) if pred.shape[1] == 2 else pred.argmax(dim=1)
        counts = confusion_counts(pred, target)
        self.update_counts(counts)

    def update_counts(self, counts: Tensor) -> None:
        """Add (B, 3) per-image (TP, FP, FN) counts as one batch."""
        tp, fp, fn = (int(v) for v in counts.sum(0))
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.image_ious.extend(per_image_iou(counts).tolist())
        denominator = 2 * tp + fp + fn
        self.batch_f1.append(2 * tp / denominator if denominator > 0 else 1.0)

    @property
    def images(self) -> int:
        return len(self.image_ious)

    def summary(self) -> Dict[str, float]:
        union = self.tp + self.fp + self.fn
        denominator = 2 * self.tp + self.fp + self.fn
        paper_f1 = sum(self.batch_f1) / len(self.batch_f1) if self.batch_f1 else float("nan")
        return {
            "iou": self.tp / union if union > 0 else float("nan"),
            "mean_image_iou": (
                sum(self.image_ious) / len(self.image_ious) if self.image_ious else float("nan")
            ),
            "f1": 2 * self.tp / denominator if denominator > 0 else float("nan"),
            "paper_f1": paper_f1,
            "paper_iou": f1_to_iou(paper_f1) if self.batch_f1 else float("nan"),
            "images": float(self.images),
        }
