"""COCO-format instance data for torchvision detection models, read with pycocotools only.

:class:`CocoInstances` reads ``instances_<split>.json`` + the images of any COCO-format set (the
synthetic shapes sets of :mod:`crbp_d2.scenes.shapes` included) into torchvision's
``(image, target)`` pairs. :func:`ensure_shapes_dataset` generates the synthetic shapes set on
first use in a child process, so that nothing here imports Detectron2 (which
``crbp_d2.rfpn.data`` registers its datasets with when it is installed).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from torch import Tensor

__all__ = [
    "CocoInstances",
    "SHAPES_LARGE_GENERATION",
    "collate",
    "encode_mask",
    "ensure_shapes_dataset",
    "load_coco",
    "shapes_paths",
]

PathLike = Union[str, "os.PathLike[str]"]

# The larger shapes set of the Detectron2 quick recipes (crbp_d2.rfpn.data.datasets
# SYNTHETIC_PANOPTIC_LARGE_GENERATION; the same files, folder synthetic_panoptic_large).
SHAPES_LARGE_GENERATION: Dict[str, int] = {
    "num_train": 4096,
    "num_val": 128,
    "image_size": 160,
    "seed": 0,
}


def shapes_paths(root: PathLike, split: str) -> Tuple[Path, Path]:
    """(images folder, instances json) of ``split`` (``train`` / ``val``) of a shapes set."""
    root = Path(root)
    return root / split, root / "annotations" / f"instances_{split}.json"


def ensure_shapes_dataset(root: PathLike, generation: Optional[Dict[str, int]] = None) -> Path:
    """Return ``root`` if it holds a COCO-format set (``train`` / ``val`` images and
    ``annotations/instances_{train,val}.json``); if ``root`` does not exist, generate the
    synthetic shapes set there first (``generation``: default :data:`SHAPES_LARGE_GENERATION`), in a
    child process (``crbp_d2.scenes.shapes``; needs OpenCV and SciPy).

    Raises:
        FileNotFoundError: ``root`` exists but lacks a split (nothing is written there).
    """
    root = Path(root)
    if not root.exists():
        code = (
            "import sys, json; from crbp_d2.scenes.shapes import "
            "ensure_synthetic_panoptic as e; e(sys.argv[1], **json.loads(sys.argv[2]))"
        )
        settings = dict(SHAPES_LARGE_GENERATION if generation is None else generation)
        subprocess.run([sys.executable, "-c", code, str(root), json.dumps(settings)], check=True)
    for split in ("train", "val"):
        images, annotations = shapes_paths(root, split)
        if not (images.is_dir() and annotations.is_file()):
            raise FileNotFoundError(
                f"{root} is not a COCO-format set: no {images} or no {annotations} (a folder "
                f"that does not exist yet gets the synthetic shapes set)"
            )
    return root


class CocoInstances(torch.utils.data.Dataset):
    """Images and instance annotations of a COCO-format set as torchvision targets.

    Item ``i``: ``(image, target)``, ``image`` (3, H, W) float in [0, 1], ``target`` with
    ``boxes`` (n, 4) xyxy float, ``labels`` (n,) int64 in 1..K (contiguous, in category-id
    order; :attr:`category_ids` maps back), ``masks`` (n, H, W) uint8, ``image_id``.
    Crowd annotations are left out of the targets (the COCO evaluation still sees them).

    Args:
        hflip: flip each image left-right with probability 1/2 (training augmentation),
            drawn from ``torch``'s global generator.
    """

    def __init__(self, images_dir: PathLike, instances_json: PathLike, hflip: bool = False):
        self.images_dir = Path(images_dir)
        self.coco = load_coco(instances_json)
        self.image_ids: List[int] = sorted(self.coco.getImgIds())
        self.category_ids: List[int] = sorted(self.coco.getCatIds())
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.hflip = hflip

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        image_id = self.image_ids[index]
        info = self.coco.loadImgs(image_id)[0]
        with Image.open(self.images_dir / info["file_name"]) as img:
            pixels = np.array(img.convert("RGB"), dtype=np.uint8)
        height, width = pixels.shape[:2]
        anns = [
            a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)) if not a["iscrowd"]
        ]
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for k, ann in enumerate(anns):
            masks[k] = self.coco.annToMask(ann)
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns]).long(),
            "masks": torch.from_numpy(masks),
            "image_id": torch.tensor(image_id),
        }
        if self.hflip and torch.rand(()) < 0.5:
            image, target = _flip(image, target)
        return image, target


def _flip(image: Tensor, target: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    flipped = dict(target, boxes=boxes, masks=target["masks"].flip(-1))
    return image.flip(-1), flipped


def load_coco(instances_json: PathLike) -> COCO:
    """pycocotools' COCO index of ``instances_json``, without its progress prints."""
    if not os.path.isfile(instances_json):
        raise FileNotFoundError(f"no COCO annotation file {instances_json}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(instances_json))


def collate(batch: Sequence[Tuple[Tensor, Dict[str, Tensor]]]) -> Tuple[list, list]:
    """Lists of images and targets (torchvision detection models take lists)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def encode_mask(mask: np.ndarray) -> Dict:
    """(H, W) bool mask -> COCO RLE with a str ``counts`` (JSON-ready)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
