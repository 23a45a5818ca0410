"""The mask head alone: its masks on the ground-truth boxes and classes (RoIs = GT boxes).

Detection quality (which boxes are found, their scores and classes) moves mask AP and PQ as much
as the masks do. To compare mask heads without that noise, :func:`evaluate_masks_on_gt_boxes`
runs the backbone on each image, gives the mask head the image's ground-truth boxes and classes
(Detectron2's ``roi_heads.forward_with_given_boxes``), pastes the masks into the image and scores
each instance against its ground-truth mask:

- mask IoU (the mask thresholded at 0.5, as Detectron2 pastes it);
- boundary F-score: precision and recall of the predicted / ground-truth boundary pixels within
  ``tolerance`` px of the other boundary (the DAVIS measure; default tolerance
  ``max(1, round(0.008 * image diagonal))``).

Results are per class (mean over that class's instances) and overall (``mIoU``, ``mBF``: means
over classes; ``IoU``, ``BF``: means over all instances). With ``steps`` a recurrent head is read
out after each of those steps from one pass (``pred_masks_steps``), as the timestep sweep does.
Everything is computed at the network's input resolution (the test-time resize of the config).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.build import build_detection_test_loader
from detectron2.layers import paste_masks_in_image
from detectron2.structures import BitMasks, Instances, PolygonMasks
from torch import nn
from tqdm import tqdm

__all__ = [
    "GT_BOX_TASK",
    "boundary_f_score",
    "build_gt_box_loader",
    "check_instance_masks",
    "evaluate_masks_on_gt_boxes",
    "mask_iou",
]

GT_BOX_TASK = "gt_box"
logger = logging.getLogger(__name__)


def mask_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two (H, W) boolean masks (1.0 when both are empty)."""
    union = np.logical_or(prediction, truth).sum()
    return float(np.logical_and(prediction, truth).sum() / union) if union else 1.0


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    inner = cv2.erode(padded, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8))
    return (padded - inner)[1:-1, 1:-1].astype(bool)


def boundary_f_score(prediction: np.ndarray, truth: np.ndarray, tolerance: int) -> float:
    """Boundary F-score of two (H, W) boolean masks: F1 of the boundary pixels matched within
    ``tolerance`` px (a disk) of the other mask's boundary. 1.0 when both are empty, 0.0 when
    exactly one is."""
    pred_edge, true_edge = _boundary(prediction), _boundary(truth)
    if not pred_edge.any() and not true_edge.any():
        return 1.0
    if not pred_edge.any() or not true_edge.any():
        return 0.0
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1,) * 2)
    near_true = cv2.dilate(true_edge.astype(np.uint8), disk).astype(bool)
    near_pred = cv2.dilate(pred_edge.astype(np.uint8), disk).astype(bool)
    precision = (pred_edge & near_true).sum() / pred_edge.sum()
    recall = (true_edge & near_pred).sum() / true_edge.sum()
    return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


def check_instance_masks(dataset_name: str) -> None:
    """Raise ``ValueError`` naming ``dataset_name`` unless its annotations hold instance masks."""
    dicts = DatasetCatalog.get(dataset_name)
    annotations = [a for d in dicts for a in d.get("annotations", ())]
    if not annotations or not all("segmentation" in a for a in annotations):
        raise ValueError(
            f"dataset {dataset_name!r} has no instance masks (annotations with 'segmentation'); "
            "the GT-box mask evaluation needs them"
        )


def build_gt_box_loader(cfg: CfgNode, dataset_name: str):
    """A test loader of ``dataset_name`` with the test-time resize that keeps the annotations
    (ground-truth boxes, classes and masks at the input resolution; crowds dropped)."""
    check_instance_masks(dataset_name)
    augmentations = [
        T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
    ]
    mapper = DatasetMapper(
        cfg, is_train=True, augmentations=augmentations, use_instance_mask=True
    )  # is_train keeps the annotations; the augmentations are the test ones
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)


def _gt_bitmasks(instances: Instances, height: int, width: int) -> torch.Tensor:
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):
        return BitMasks.from_polygon_masks(masks, height, width).tensor
    return masks.tensor if isinstance(masks, BitMasks) else torch.as_tensor(masks)


def _recurrent_head(model: nn.Module):
    head = getattr(getattr(model, "roi_heads", None), "mask_head", None)
    return head if hasattr(head, "return_timecourse") else None


@torch.no_grad()
def evaluate_masks_on_gt_boxes(
    model: nn.Module,
    data_loader: Iterable[List[Dict]],
    class_names: Sequence[str],
    steps: Optional[Sequence[int]] = None,
    tolerance: Optional[int] = None,
    progress: bool = False,
) -> Dict[int, Dict[str, float]]:
    """Score the mask head of a Detectron2 R-CNN ``model`` on ground-truth boxes and classes.

    Args:
        data_loader: batches of mapped dicts with ``image`` and ``instances`` (``gt_boxes``,
            ``gt_classes``, ``gt_masks``), e.g. from :func:`build_gt_box_loader`.
        class_names: the thing classes (index = contiguous class id).
        steps: for a recurrent head, the test step counts to read out (one pass to the largest;
            default: its test steps). Feedforward heads ignore it (key 0 in the result).
        tolerance: boundary tolerance in px (default 0.8% of the image diagonal, at least 1).

    Returns:
        {steps: {"IoU", "BF", "mIoU", "mBF", "IoU-<class>", "BF-<class>", "instances"}}, the
        IoU/BF values in percent. For a feedforward head the only key is 0.
    """
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    head = _recurrent_head(model)
    wanted: List[int] = [0]
    if head is not None:
        wanted = sorted(set(steps)) if steps else [head.test_steps]
        if wanted[0] < 1:
            raise ValueError(f"steps must be >= 1, got {list(steps)}")
        old_steps, old_timecourse = head.test_steps, head.return_timecourse
        head.test_steps, head.return_timecourse = max(wanted), True
    scores: Dict[int, Dict[int, List[tuple]]] = {s: defaultdict(list) for s in wanted}
    try:
        for batch in tqdm(data_loader, desc="masks on GT boxes", disable=not progress):
            _score_batch(model, batch, wanted, head is not None, tolerance, scores)
    finally:
        model.train(was_training)
        if head is not None:
            head.test_steps, head.return_timecourse = old_steps, old_timecourse
    return {s: _summarise(scores[s], class_names) for s in wanted}


def _score_batch(model, batch, wanted, recurrent, tolerance, scores) -> None:
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    given = []
    for sample, image_size in zip(batch, images.image_sizes):
        gt = sample["instances"].to(model.device)
        given.append(Instances(image_size, pred_boxes=gt.gt_boxes, pred_classes=gt.gt_classes))
    outputs = model.roi_heads.forward_with_given_boxes(features, given)
    for sample, output, image_size in zip(batch, outputs, images.image_sizes):
        if len(output) == 0:
            continue
        height, width = image_size
        gt = sample["instances"]
        truth = _gt_bitmasks(gt, height, width).cpu().numpy().astype(bool)
        classes = gt.gt_classes.tolist()
        tol = tolerance or max(1, round(0.008 * float(np.hypot(height, width))))
        for step in wanted:
            probs = output.pred_masks_steps[:, step - 1] if recurrent else output.pred_masks[:, 0]
            pasted = paste_masks_in_image(probs, output.pred_boxes, (height, width), threshold=0.5)
            pasted = pasted.cpu().numpy().astype(bool)
            for index, class_id in enumerate(classes):
                iou = mask_iou(pasted[index], truth[index])
                bf = boundary_f_score(pasted[index], truth[index], tol)
                scores[step][class_id].append((iou, bf))


def _summarise(by_class: Mapping[int, List[tuple]], class_names: Sequence[str]) -> Dict[str, float]:
    result: Dict[str, float] = {}
    ious, bfs, class_ious, class_bfs = [], [], [], []
    for class_id in sorted(by_class):
        values = np.asarray(by_class[class_id])
        name = class_names[class_id] if class_id < len(class_names) else str(class_id)
        result[f"IoU-{name}"] = 100.0 * float(values[:, 0].mean())
        result[f"BF-{name}"] = 100.0 * float(values[:, 1].mean())
        class_ious.append(result[f"IoU-{name}"])
        class_bfs.append(result[f"BF-{name}"])
        ious += values[:, 0].tolist()
        bfs += values[:, 1].tolist()
    count = len(ious)
    result["IoU"] = 100.0 * float(np.mean(ious)) if count else float("nan")
    result["BF"] = 100.0 * float(np.mean(bfs)) if count else float("nan")
    result["mIoU"] = float(np.mean(class_ious)) if class_ious else float("nan")
    result["mBF"] = float(np.mean(class_bfs)) if class_bfs else float("nan")
    result["instances"] = float(count)
    return result


def gt_box_results(cfg: CfgNode, model: nn.Module, dataset_name: str) -> Dict[str, float]:
    """The GT-box mask scores of ``model`` on ``dataset_name`` at its test steps, as one flat
    dict for ``results[GT_BOX_TASK]`` (metrics.json and the copypaste lines)."""
    loader = build_gt_box_loader(cfg, dataset_name)
    names = MetadataCatalog.get(dataset_name).thing_classes
    by_steps = evaluate_masks_on_gt_boxes(model, loader, names)
    result = next(iter(by_steps.values()))
    logger.info(
        f"Masks on ground-truth boxes of {dataset_name}: mIoU {result['mIoU']:.2f}, "
        f"mBF {result['mBF']:.2f} ({result['instances']:.0f} instances)"
    )
    return result
