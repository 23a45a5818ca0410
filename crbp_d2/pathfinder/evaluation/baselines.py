"""Non-learned baselines for Pathfinder segmentation (every model must beat them).

* marker only: predict the ink around the detected marker disk (the disk is part of the label,
  so this is the IoU a model gets for free);
* all ink: predict every ink pixel, the marked contour and the distractors alike (what a model
  gets that finds ink but does not trace; its IoU is the marked contour's share of the ink);
* morphological flood fill: dilate the ink by a disk of radius ``k``, keep the connected
  component that contains the marker and intersect it with the ink. With ``k`` about the gap
  between dashes this follows the target until it passes near other ink.

Inputs are what a model sees: image float (H, W) in [0, 1] (e.g. 150 px after the C-RBP
transform); the marker is found from the image alone (the brightest disk-sized blob).
Scores are those of :class:`~.metrics.SegmentationMeter` (the trainer's): pooled IoU, mean
per-image IoU, and the paper's metric (F1 pooled over the pixels of each batch of 128 images,
averaged over batches, reported as IoU = F1 / (2 - F1)).
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from crbp_d2.contours.generator import preset
from crbp_d2.contours.geometry import disk_kernel
from crbp_d2.contours.stats import path_statistics as contour_path_statistics

from ..data.datasets import PathfinderOnTheFly, PathfinderStored, PathfinderTransform
from .metrics import SegmentationMeter, confusion_counts, per_image_iou


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


def all_ink(image: np.ndarray, ink_threshold: float = 0.2) -> np.ndarray:
    """bool (H, W): every ink pixel (the marker's disk included)."""
    return image > ink_threshold


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


def _counts(prediction: np.ndarray, label: np.ndarray) -> torch.Tensor:
    """(1, 3) (TP, FP, FN) of one bool (H, W) prediction against its bool (H, W) label."""
    return confusion_counts(torch.from_numpy(prediction)[None], torch.from_numpy(label)[None])


def iou(prediction: np.ndarray, label: np.ndarray) -> float:
    """Intersection over union of two bool (H, W) masks (1.0 when both are empty)."""
    return float(per_image_iou(_counts(prediction, label))[0])


def evaluate_baselines(
    pairs: Iterable[Tuple[np.ndarray, np.ndarray]],
    marker_radius: float,
    radii: Sequence[int] = (1, 2, 3, 4),
    ink_threshold: float = 0.2,
    batch_size: int = 128,
    best_by: str = "mean_iou",
) -> Dict[str, Dict[str, float]]:
    """Scores of the marker-only, all-ink and flood-fill (one per radius) baselines.

    pairs: (image float (H, W) in [0, 1], label bool (H, W)); marker_radius in pixels at that
    resolution (2.5 at 150 px for the C-RBP data); batch_size: images per batch of the paper's
    metric. Returns {name: scores} with names "marker_only", "all_ink", "flood_fill_k<r>" and
    "flood_fill_best" (the radius with the best ``best_by`` score, an oracle choice as in the
    reference figures; its scores also hold ``radius``). Scores: the
    :meth:`~.metrics.SegmentationMeter.summary` (iou, mean_image_iou, f1, paper_f1, paper_iou,
    images) plus ``mean_iou`` (= mean_image_iou) and ``n`` (the number of images).
    """
    names = ["marker_only", "all_ink"] + [f"flood_fill_k{radius}" for radius in radii]
    meters = {name: SegmentationMeter() for name in names}
    batch: Dict[str, List[torch.Tensor]] = {name: [] for name in names}

    def close_batch() -> None:
        for name in names:
            if batch[name]:
                meters[name].update_counts(torch.cat(batch[name]))
                batch[name].clear()

    for image, label in pairs:
        image = np.asarray(image, dtype=np.float32)
        label = np.asarray(label).astype(bool)
        batch["marker_only"].append(
            _counts(marker_only(image, marker_radius, ink_threshold), label)
        )
        batch["all_ink"].append(_counts(all_ink(image, ink_threshold), label))
        for radius in radii:
            prediction = flood_fill(image, radius, marker_radius, ink_threshold)
            batch[f"flood_fill_k{radius}"].append(_counts(prediction, label))
        if len(batch["marker_only"]) == batch_size:
            close_batch()
    close_batch()
    results = {}
    for name, meter in meters.items():
        summary = meter.summary()
        results[name] = dict(summary, mean_iou=summary["mean_image_iou"], n=meter.images)
    if radii:
        best = max(radii, key=lambda r: results[f"flood_fill_k{r}"][best_by])
        results["flood_fill_best"] = dict(results[f"flood_fill_k{best}"], radius=best)
    return results


def dataset_pairs(dataset, limit: Optional[int] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(image (H, W) float32, label (H, W) bool) from a dataset yielding the transform's
    (image (1, H, W), label (H, W)) tensors."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for position in range(count):
        image, label = dataset[position]
        yield np.asarray(image)[0], np.asarray(label).astype(bool)


def baselines_report(
    length: int = 14,
    num: int = 1000,
    seed: int = 1,
    size: int = 150,
    data: Optional[str] = None,
    split: str = "test",
    list_file: Optional[str] = None,
    radii: Sequence[int] = (1, 2, 3, 4),
    ink_threshold: float = 0.2,
    legacy_quirks: bool = False,
    path_statistics: bool = False,
) -> Dict[str, object]:
    """The baselines on ``num`` PF``length`` images at ``size`` px (the paper's transform, no
    flip): generated on the fly (samples 0..num-1 of ``seed``) or read from ``data`` (a
    generated dataset's ``split``, or the authors' PNGs through ``list_file``).

    Returns {"source", "size", "length", "results": :func:`evaluate_baselines`'s, and with
    ``path_statistics`` (on-the-fly data only) "path_statistics": the generator's path
    statistics of up to 500 of those samples}.
    """
    if path_statistics and data is not None:
        raise ValueError("path statistics need on-the-fly data (no data folder)")
    params = preset(length, legacy_quirks=legacy_quirks)
    transform = PathfinderTransform(size, flip=False)
    if data is None:
        dataset = PathfinderOnTheFly(params, num, seed, transform)
        source = f"on the fly, PF{length}, seed {seed}"
    else:
        dataset = PathfinderStored(data, split, length, transform, list_file=list_file)
        source = f"{data} ({split})"
    marker_radius = params.marker_radius * size / params.canvas_size
    results = evaluate_baselines(dataset_pairs(dataset, num), marker_radius, radii, ink_threshold)
    report: Dict[str, object] = {"source": source, "size": size, "length": length}
    report["results"] = results
    if path_statistics:
        report["path_statistics"] = contour_path_statistics(params, seed, min(num, 500))
    return report


def baselines_table(report: Dict[str, object]) -> str:
    """The Markdown table of a :func:`baselines_report` (mean per-image IoU, paper IoU)."""
    results = report["results"]
    lines = [
        f"Baselines on {results['marker_only']['n']} images ({report['source']}) "
        f"at {report['size']} px",
        "| baseline | mean per-image IoU | paper IoU (pooled F1 -> F1/(2-F1)) |",
        "|---|---|---|",
    ]
    for name, score in results.items():
        lines.append(f"| {name} | {score['mean_iou']:.3f} | {score['paper_iou']:.3f} |")
    return "\n".join(lines)
