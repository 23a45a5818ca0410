"""Drawing predictions of a Panoptic FPN / R-FPN model with Detectron2's Visualizer.

:func:`render_panoptic` draws the panoptic segmentation of one image; :func:`render_timecourse`
draws the detections with their masks after every recurrent step, one panel per step (like Fig. 3c
of Linsley et al. 2020). :func:`run_demo` does both for a list of images and writes PNGs.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import List, Optional, Sequence

from . import config as _config  # noqa: F401  (first: Detectron2 compatibility + registration)

# isort: split
import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, Visualizer

from .config import check_weights_file, get_crbp_cfg
from .data import check_dataset_name, prepare_dataset_files
from .modeling import instances_at_step, recurrent_mask_head

__all__ = [
    "IMAGE_EXTENSIONS",
    "expand_inputs",
    "grid",
    "label_panel",
    "render_panoptic",
    "render_timecourse",
    "run_demo",
]

logger = logging.getLogger("crbp_d2.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Files, folders (their images, sorted) and globs -> image paths; error if none exist."""
    paths: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(pattern):
            paths.append(pattern)
        else:
            matches = sorted(glob.glob(os.path.expanduser(pattern)))
            if not matches:
                raise FileNotFoundError(f"--input {pattern!r}: no such file, folder or glob match")
            paths += matches
    if not paths:
        raise FileNotFoundError(f"--input {' '.join(patterns)}: no images found")
    return paths


def label_panel(panel: np.ndarray, text: str) -> np.ndarray:
    """(H, W, 3) ``panel`` with ``text`` written in its top-left corner, sized to the panel."""
    panel = np.ascontiguousarray(panel)
    size = max(panel.shape[1] / 600.0, 0.4)
    origin = (int(6 * size) + 2, int(24 * size) + 4)
    for color, width in (((255, 255, 255), 3), ((0, 0, 0), 1)):
        thickness = max(int(width * size), width)
        cv2.putText(
            panel, text, origin, cv2.FONT_HERSHEY_SIMPLEX, size, color, thickness, cv2.LINE_AA
        )
    return panel


def grid(panels: List[np.ndarray], columns: int = 5) -> np.ndarray:
    """Tile equally sized (H, W, 3) panels row by row (blank panels fill the last row)."""
    rows = [panels[i : i + columns] for i in range(0, len(panels), columns)]
    blank = np.full_like(panels[0], 255)
    rows[-1] = rows[-1] + [blank] * (len(rows[0]) - len(rows[-1]))
    return np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)


def render_panoptic(rgb: np.ndarray, outputs: dict, metadata, scale: float) -> np.ndarray:
    """The (H * scale, W * scale, 3) RGB drawing of ``outputs["panoptic_seg"]`` on ``rgb``."""
    panoptic, segments = outputs["panoptic_seg"]
    visualizer = Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_panoptic_seg(panoptic.to("cpu"), segments).get_image()


def render_timecourse(
    rgb: np.ndarray,
    instances: Instances,
    metadata,
    threshold: float,
    steps: int,
    scale: float,
) -> np.ndarray:
    """One panel per step t = 1..steps: the detections with their masks after t steps (each
    instance keeps its colour across panels), tiled 5 per row.

    Args:
        rgb: (H, W, 3) uint8 image.
        instances: predictions on CPU with ``pred_masks_steps`` (R, T, 28, 28).
        threshold: detections with a lower score are not drawn.
    """
    instances = instances[instances.scores >= threshold]
    names = metadata.get("thing_classes", None)
    labels = [
        f"{names[c] if names else c} {s:.0%}"
        for c, s in zip(instances.pred_classes.tolist(), instances.scores.tolist())
    ]
    palette = colormap(rgb=True, maximum=1)
    colors = [palette[i % len(palette)] for i in range(len(instances))]
    panels = []
    for t in range(1, steps + 1):
        at_t = instances_at_step(instances, t)
        visualizer = Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
        drawn = visualizer.overlay_instances(
            masks=at_t.pred_masks.numpy() if len(at_t) else None,
            boxes=at_t.pred_boxes if len(at_t) else None,
            labels=labels or None,
            assigned_colors=colors or None,
        )
        panels.append(label_panel(drawn.get_image(), f"t={t}"))
    return grid(panels)


def run_demo(
    config_file: str,
    inputs: Sequence[str],
    output: str,
    opts: Sequence[str] = (),
    confidence_threshold: float = 0.5,
    timecourse: bool = False,
    steps: Optional[int] = None,
    max_images: Optional[int] = None,
    scale: Optional[float] = None,
) -> List[str]:
    """Predict on every image of ``inputs`` (files, folders, globs) with the model of
    ``config_file`` + ``opts`` and write ``output/<stem>_panoptic.png`` and, with
    ``timecourse``, ``output/<stem>_timecourse.png`` (one panel per test step, or per ``steps``).
    The class names come from ``DATASETS.TEST[0]``; ``scale`` default: panels >= 400 px.

    Returns the written files. Bad input raises ``KeyError`` / ``FileNotFoundError`` /
    ``ValueError`` before the model is built.
    """
    cfg = get_crbp_cfg(config_file, opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    check_weights_file(cfg)
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: the demo takes class names from DATASETS.TEST[0]")
    check_dataset_name(cfg.DATASETS.TEST[0], "DATASETS.TEST[0]")
    prepare_dataset_files(cfg.DATASETS.TEST[0])  # lazily generated datasets: make their files
    cfg.freeze()
    paths = expand_inputs(inputs)[:max_images]
    os.makedirs(output, exist_ok=True)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])

    predictor = DefaultPredictor(cfg)
    if timecourse:
        head = recurrent_mask_head(predictor.model)
        if steps is not None:
            head.test_steps = steps
        head.return_timecourse = True
    written = []
    for path in paths:
        image = read_image(path, format="BGR")
        outputs = predictor(image)
        rgb = image[:, :, ::-1]
        image_scale = scale or max(1.0, 400.0 / max(image.shape[:2]))
        stem = os.path.join(output, os.path.splitext(os.path.basename(path))[0])
        panoptic = render_panoptic(rgb, outputs, metadata, image_scale)
        cv2.imwrite(stem + "_panoptic.png", panoptic[:, :, ::-1])
        written.append(stem + "_panoptic.png")
        if timecourse:
            instances = outputs["instances"].to("cpu")
            tiles = render_timecourse(
                rgb,
                instances,
                metadata,
                confidence_threshold,
                instances.pred_masks_steps.shape[1],
                image_scale,
            )
            cv2.imwrite(stem + "_timecourse.png", tiles[:, :, ::-1])
            written.append(stem + "_timecourse.png")
        segments = outputs["panoptic_seg"][1]
        logger.info(f"{path}: {len(outputs['instances'])} instances, {len(segments)} segments")
    logger.info(f"wrote {len(written)} images to {output}")
    return written
