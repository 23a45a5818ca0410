"""COCO panoptic format helpers: the RGB id encoding and Panoptic FPN "separated" semantic labels.

COCO panoptic PNGs store a segment id per pixel as ``id = R + 256 * G + 256**2 * B``; id 0 is VOID
(unlabelled). Panoptic FPN trains its semantic branch on "separated" semantic PNGs derived from
them: every stuff category gets a contiguous label ``1..#stuff`` (in category-id order), every
thing category is merged into label 0 ("things") and VOID pixels get the ignore label 255. This
is the format Detectron2's ``register_coco_panoptic_separated`` reads from ``sem_seg_root``.
"""

import json
import os
from multiprocessing import Pool
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

PathLike = Union[str, "os.PathLike[str]"]

VOID_ID = 0
"""Segment id of unlabelled pixels in a panoptic PNG."""
SEMANTIC_IGNORE_LABEL = 255
"""Label of VOID pixels in the separated semantic PNGs (Detectron2's ``ignore_label``)."""
SEMANTIC_THINGS_LABEL = 0
"""Label shared by all thing categories in the separated semantic PNGs."""
MAX_SEGMENT_ID = 256**3 - 1


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Decode an ``(H, W, 3)`` RGB panoptic image into an ``(H, W)`` uint32 segment-id map."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[-1] != 3:
        raise ValueError(f"rgb2id expects an (H, W, 3) RGB array, got shape {color.shape}")
    color = color.astype(np.uint32)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(segment_ids: np.ndarray) -> np.ndarray:
    """Encode an ``(H, W)`` map of ids in ``[0, 256**3)`` as an ``(H, W, 3)`` uint8 RGB image."""
    ids = np.asarray(segment_ids)
    if ids.ndim != 2:
        raise ValueError(f"id2rgb expects an (H, W) id map, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(
            f"id2rgb: segment ids must lie in [0, {MAX_SEGMENT_ID}], "
            f"got range [{ids.min()}, {ids.max()}]"
        )
    ids = ids.astype(np.uint32)
    channels = [ids % 256, (ids // 256) % 256, (ids // 65536) % 256]
    return np.stack(channels, axis=-1).astype(np.uint8)


def read_panoptic_png(path: PathLike) -> np.ndarray:
    """Read a COCO panoptic PNG as an ``(H, W)`` uint32 segment-id map."""
    with Image.open(path) as image:
        return rgb2id(np.asarray(image.convert("RGB")))


def separated_stuff_label_map(categories: Iterable[Mapping]) -> Dict[int, int]:
    """Map each category id to its label in the separated semantic PNGs.

    Stuff categories (``isthing == 0``) get ``1..#stuff`` in increasing category-id order; thing
    categories get 0. This is also the inverse of Detectron2's
    ``stuff_dataset_id_to_contiguous_id`` metadata (plus ``{0: 0}`` for the "things" label).
    """
    categories = list(categories)
    stuff_ids = sorted(int(c["id"]) for c in categories if not c["isthing"])
    if len(stuff_ids) > 254:
        raise ValueError(
            f"{len(stuff_ids)} stuff categories do not fit the uint8 semantic labels 1..254"
        )
    label_map = {int(c["id"]): SEMANTIC_THINGS_LABEL for c in categories if c["isthing"]}
    label_map.update({cat_id: index + 1 for index, cat_id in enumerate(stuff_ids)})
    return label_map


def panoptic_to_separated_semantic(
    segment_ids: np.ndarray, segments_info: Sequence[Mapping], label_map: Mapping[int, int]
) -> np.ndarray:
    """Turn a segment-id map into a separated semantic label map (uint8, VOID = 255).

    Pixels whose segment id is 0 or not listed in ``segments_info`` stay 255, as in COCO.
    """
    semantic = np.full(segment_ids.shape, SEMANTIC_IGNORE_LABEL, dtype=np.uint8)
    for segment in segments_info:
        category_id = int(segment["category_id"])
        if category_id not in label_map:
            raise KeyError(
                f"segment {segment['id']} has category_id {category_id}, "
                "which is not in the dataset's categories"
            )
        semantic[segment_ids == int(segment["id"])] = label_map[category_id]
    return semantic


def _convert_one(job: Tuple[str, str, List[Mapping], Dict[int, int]]) -> None:
    panoptic_png, semantic_png, segments_info, label_map = job
    semantic = panoptic_to_separated_semantic(
        read_panoptic_png(panoptic_png), segments_info, label_map
    )
    Image.fromarray(semantic).save(semantic_png)


def write_separated_semantic(
    panoptic_json: PathLike,
    panoptic_root: PathLike,
    sem_seg_root: PathLike,
    num_workers: Optional[int] = None,
) -> int:
    """Write one separated semantic PNG per annotation of a COCO panoptic json.

    Args:
        panoptic_json: COCO panoptic annotation file (``annotations`` and ``categories``).
        panoptic_root: folder with the panoptic PNGs named by each annotation's ``file_name``.
        sem_seg_root: output folder (created); PNGs keep the panoptic file names.
        num_workers: processes to use; ``None`` or ``<= 1`` converts in this process.

    Returns:
        The number of PNGs written.
    """
    with open(panoptic_json, "r") as f:
        dataset = json.load(f)
    for key in ("annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"{panoptic_json} is not a COCO panoptic json: no '{key}' field")
    label_map = separated_stuff_label_map(dataset["categories"])
    os.makedirs(sem_seg_root, exist_ok=True)
    jobs = [
        (
            os.path.join(panoptic_root, annotation["file_name"]),
            os.path.join(sem_seg_root, annotation["file_name"]),
            annotation["segments_info"],
            label_map,
        )
        for annotation in dataset["annotations"]
    ]
    if num_workers is not None and num_workers > 1 and len(jobs) > 1:
        with Pool(processes=num_workers) as pool:
            for _ in pool.imap_unordered(_convert_one, jobs, chunksize=64):
                pass
    else:
        for job in jobs:
            _convert_one(job)
    return len(jobs)
