"""COCO mask and box AP of a torchvision Mask R-CNN, with pycocotools."""

from __future__ import annotations

import contextlib
import io
from typing import Dict, List

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval
from torch import nn

from .data import CocoInstances, encode_mask

__all__ = ["coco_detections", "coco_ap"]


@torch.no_grad()
def coco_detections(model: nn.Module, dataset: CocoInstances, mask_threshold: float = 0.5):
    """Run ``model`` (eval mode) over ``dataset``; returns (segm results, bbox results) in the
    COCO results format (category ids of the dataset, RLE masks at image size)."""
    model.eval()
    segm: List[Dict] = []
    bbox: List[Dict] = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        out = model([image])[0]
        image_id = int(target["image_id"])
        masks = (out["masks"][:, 0] >= mask_threshold).numpy()
        for box, label, score, mask in zip(
            out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist(), masks
        ):
            category = dataset.category_ids[label - 1]
            x0, y0, x1, y1 = box
            common = {"image_id": image_id, "category_id": category, "score": float(score)}
            bbox.append({**common, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            segm.append({**common, "segmentation": encode_mask(mask)})
    return segm, bbox


def coco_ap(model: nn.Module, dataset: CocoInstances) -> Dict[str, float]:
    """Mask and box AP, AP50, AP75 (x 100) of ``model`` on ``dataset`` (COCOeval); 0 for a
    model that detects nothing."""
    segm, bbox = coco_detections(model, dataset)
    scores: Dict[str, float] = {}
    for kind, results in (("segm", segm), ("bbox", bbox)):
        if not results:
            scores.update({f"{kind}_AP": 0.0, f"{kind}_AP50": 0.0, f"{kind}_AP75": 0.0})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(dataset.coco, dataset.coco.loadRes(results), kind)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = np.maximum(evaluation.stats[:3], 0.0) * 100.0
        scores.update({f"{kind}_AP": stats[0], f"{kind}_AP50": stats[1], f"{kind}_AP75": stats[2]})
    return {k: float(v) for k, v in scores.items()}
