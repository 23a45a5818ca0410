"""Non-learned baselines for Pathfinder segmentation (every model must beat them).

* marker only: predict the ink around the detected marker disk (the disk is part of the label,
  so this is the IoU a model gets for free);
* morphological flood fill: dilate the ink by a disk of radius ``k``, keep the connected
  component that contains the marker and intersect it with the ink. With ``k`` about the gap
  between dashes this follows the target until it passes near other ink.

Inputs are what a model sees: image float (H, W) in [0, 1] (e.g. 150 px after the C-RBP
transform); the marker is found from the image alone (the brightest disk-sized blob).
Scores: mean per-image IoU, and the paper's metric (F1 pooled over the pixels of each batch of
128 images, averaged over batches, reported as IoU = F1 / (2 - F1)).
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from crbp_d2.contours.geometry import disk_kernel


def detect_marker(image: np.ndarray, marker_radius: float) -> Tuple[int, int]:
    """(row, col) of the marker disk: the maximum of the image averaged over a disk of
    ``marker_radius`` px. image: (H, W) float in [0, 1]."""
    radius = max(marker_radius, 1.0)
    kernel = _soft_disk(radius)
    response = cv2.filter2D(image.astype(np.float32), -1, kernel, borderType=cv2.BORDER_CONSTANT)
    flat = int(np.argmax(response))
    return divmod(flat, image.shape[1])


def _soft_disk(radius: float) -> np.ndarray:
    r = int(math.ceil(radius))
    dr, dc = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = np.clip(radius + 0.5 - np.hypot(dr, dc), 0, 1).astype(np.float32)
    return kernel / kernel.sum()


def marker_only(image: np.ndarray, marker_radius: float, ink_threshold: float = 0.2) -> np.ndarray:
    """bool (H, W): ink pixels within ``marker_radius + 1`` px of the detected marker."""
    row, col = detect_marker(image, marker_radius)
    rr, cc = np.ogrid[: image.shape[0], : image.shape[1]]
    near = (rr - row) ** 2 + (cc - col) ** 2 <= (marker_radius + 1.0) ** 2
    return near & (image > ink_threshold)


def flood_fill(
    image: np.ndarray, radius: int, marker_radius: float, ink_threshold: float = 0.2
) -> np.ndarray:
    """bool (H, W): ink connected to the marker once the ink is dilated by a disk of ``radius``."""
    ink = (image > ink_threshold).astype(np.uint8)
    row, col = detect_marker(image, marker_radius)
    grown = cv2.dilate(ink, disk_kernel(radius)) if radius > 0 else ink
    _, components = cv2.connectedComponents(grown, connectivity=8)
    component = components[row, col]
    if component == 0:
        return np.zeros(image.shape, dtype=bool)
    return (components == component) & (ink > 0)


def iou(prediction: np.ndarray, label: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(prediction, label).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(prediction, label).sum() / union)


class _Score:
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.ious: List[float] = []
        self.batch_f1: List[float] = []
        self._counts = np.zeros(3, dtype=np.int64)  # tp, fp, fn
        self._in_batch = 0

    def add(self, prediction: np.ndarray, label: np.ndarray) -> None:
        self.ious.append(iou(prediction, label))
        tp = int(np.logical_and(prediction, label).sum())
        self._counts += (tp, int(prediction.sum()) - tp, int(label.sum()) - tp)
        self._in_batch += 1
        if self._in_batch == self.batch_size:
            self._close_batch()

    def _close_batch(self) -> None:
        tp, fp, fn = self._counts
        self.batch_f1.append(2 * tp / max(2 * tp + fp + fn, 1))
        self._counts[:] = 0
        self._in_batch = 0

    def result(self) -> Dict[str, float]:
        if self._in_batch:
            self._close_batch()
        f1 = float(np.mean(self.batch_f1)) if self.batch_f1 else float("nan")
        return {
            "mean_iou": float(np.mean(self.ious)),
            "pooled_f1": f1,
            "paper_iou": f1 / (2 - f1),
            "n": len(self.ious),
        }


def evaluate_baselines(
    pairs: Iterable[Tuple[np.ndarray, np.ndarray]],
    marker_radius: float,
    radii: Sequence[int] = (1, 2, 3, 4),
    ink_threshold: float = 0.2,
    batch_size: int = 128,
) -> Dict[str, Dict[str, float]]:
    """Scores of the marker-only and flood-fill (one per radius) baselines.

    pairs: (image float (H, W) in [0, 1], label bool (H, W)); marker_radius in pixels at that
    resolution (2.5 at 150 px for the C-RBP data). Returns {name: {mean_iou, pooled_f1,
    paper_iou, n}} with names "marker_only", "flood_fill_k<r>" and "flood_fill_best" (the radius
    with the best mean IoU, an oracle choice as in the reference figures).
    """
    scores = {"marker_only": _Score(batch_size)}
    for radius in radii:
        scores[f"flood_fill_k{radius}"] = _Score(batch_size)
    for image, label in pairs:
        image = np.asarray(image, dtype=np.float32)
        label = np.asarray(label).astype(bool)
        scores["marker_only"].add(marker_only(image, marker_radius, ink_threshold), label)
        for radius in radii:
            prediction = flood_fill(image, radius, marker_radius, ink_threshold)
            scores[f"flood_fill_k{radius}"].add(prediction, label)
    results = {name: score.result() for name, score in scores.items()}
    if radii:
        best = max(radii, key=lambda r: results[f"flood_fill_k{r}"]["mean_iou"])
        results["flood_fill_best"] = dict(results[f"flood_fill_k{best}"], radius=best)
    return results


def dataset_pairs(dataset, limit: Optional[int] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(image (H, W) float32, label (H, W) bool) from a dataset yielding the transform's
    (image (1, H, W), label (H, W)) tensors."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for position in range(count):
        image, label = dataset[position]
        yield np.asarray(image)[0], np.asarray(label).astype(bool)
