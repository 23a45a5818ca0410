"""Drawing predictions of a Panoptic FPN / R-FPN model with Detectron2's Visualizer.

:func:`render_panoptic` draws the panoptic segmentation of one image; :func:`render_timecourse`
draws the detections with their masks after every recurrent step, one panel per step (like Fig. 3c
of Linsley et al. 2020). :func:`run_demo` does both for a list of images and writes PNGs.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.layers import paste_masks_in_image
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..utils import pyplot
from .config import check_device, check_weights_file, get_crbp_cfg
from .data import check_dataset_name, prepare_dataset_files
from .modeling import recurrent_mask_head

__all__ = [
    "IMAGE_EXTENSIONS",
    "expand_inputs",
    "render_panoptic",
    "render_timecourse",
    "run_demo",
    "timecourse_layout",
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


def render_panoptic(rgb: np.ndarray, outputs: dict, metadata, scale: float) -> np.ndarray:
    """The (H * scale, W * scale, 3) RGB drawing of ``outputs["panoptic_seg"]`` on ``rgb``."""
    panoptic, segments = outputs["panoptic_seg"]
    visualizer = Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_panoptic_seg(panoptic.to("cpu"), segments).get_image()


def timecourse_layout(
    instances: Instances, threshold: float, max_instances: int = 6, max_steps: int = 8
) -> Tuple[Instances, List[int]]:
    """The rows and columns of :func:`render_timecourse`: the detections with score >=
    ``threshold``, highest first (at most ``max_instances``), and up to ``max_steps`` steps
    evenly spaced from 1 to the last recorded step (both ends included)."""
    confident = instances[instances.scores >= threshold]
    confident = confident[confident.scores.argsort(descending=True)[:max_instances]]
    total = instances.pred_masks_steps.shape[1]
    shown = sorted({int(round(t)) for t in np.linspace(1, total, min(max_steps, total))})
    return confident, shown


def render_timecourse(
    rgb: np.ndarray,
    instances: Instances,
    metadata,
    threshold: float,
    max_instances: int = 6,
    max_steps: int = 8,
) -> np.ndarray:
    """The recurrent mask head at work: one row per confident detection (score >= ``threshold``,
    highest first, at most ``max_instances``), one panel per shown step (up to ``max_steps``,
    evenly spaced from 1 to the last), each the detection's box region with its mask probability
    after that step; one colour bar. Returns the (H, W, 3) uint8 RGB figure.

    Args:
        rgb: (H, W, 3) uint8 image.
        instances: predictions on CPU with ``pred_masks_steps`` (R, T, 28, 28).
    """
    plt = pyplot()
    confident, shown = timecourse_layout(instances, threshold, max_instances, max_steps)
    names = metadata.get("thing_classes", None)
    rows = max(len(confident), 1)
    fig, axes = plt.subplots(
        rows, len(shown) + 1, figsize=(1.7 * (len(shown) + 1) + 0.9, 1.8 * rows), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    if not len(confident):
        axes[0][0].set_title(f"no detection with score >= {threshold:.2f}", fontsize=8, loc="left")
    height, width = rgb.shape[:2]
    image = None
    for row in range(len(confident)):
        one = confident[row : row + 1]
        x0, y0, x1, y1 = one.pred_boxes.tensor[0].tolist()
        margin = 0.2 * max(x1 - x0, y1 - y0)
        top, bottom = int(max(y0 - margin, 0)), int(min(y1 + margin, height))
        left, right = int(max(x0 - margin, 0)), int(min(x1 + margin, width))
        crop = rgb[top:bottom, left:right]
        name = names[int(one.pred_classes[0])] if names else int(one.pred_classes[0])
        axes[row][0].imshow(crop)
        axes[row][0].set_title(f"{name} {float(one.scores[0]):.0%}", fontsize=8)
        for column, step in enumerate(shown, start=1):
            probability = (
                paste_masks_in_image(
                    one.pred_masks_steps[:, step - 1], one.pred_boxes, (height, width), threshold=-1
                )[0].float()
                / 255.0
            )
            axes[row][column].imshow(crop)
            image = axes[row][column].imshow(
                probability[top:bottom, left:right].numpy(), cmap="magma", vmin=0, vmax=1, alpha=0.7
            )
            if row == 0:
                axes[row][column].set_title(f"step {step}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7, label="mask probability")
    fig.suptitle("mask of each confident detection after each recurrent step", fontsize=9)
    fig.canvas.draw()
    drawn = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return drawn


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
    random_weights: bool = False,
) -> List[str]:
    """Predict on every image of ``inputs`` (files, folders, globs) with the model of
    ``config_file`` + ``opts`` and write ``output/<stem>_panoptic.png`` and, with
    ``timecourse``, ``output/<stem>_timecourse.png`` (:func:`render_timecourse`: each confident
    detection's mask step by step, up to the test steps or ``steps``).
    The class names come from ``DATASETS.TEST[0]``; ``scale`` default: panels >= 400 px. Without
    ``MODEL.WEIGHTS`` it refuses to draw a randomly initialised model unless ``random_weights``.
    An input that is not a readable image is skipped with a warning.

    Returns the written files. Bad input raises ``KeyError`` / ``FileNotFoundError`` /
    ``ValueError`` before the model is built.
    """
    cfg = get_crbp_cfg(config_file, opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    check_device(cfg)
    check_weights_file(cfg)
    if not cfg.MODEL.WEIGHTS and not random_weights:
        raise ValueError(
            "MODEL.WEIGHTS is empty: the demo would draw a randomly initialised model; pass "
            "--opts MODEL.WEIGHTS CHECKPOINT, or --random-weights to do it anyway"
        )
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
        try:
            image = read_image(path, format="BGR")
        except (OSError, ValueError, SyntaxError) as error:  # what Pillow raises for bad files
            logger.warning(f"skipped {path}: not a readable image ({error})")
            continue
        outputs = predictor(image)
        rgb = image[:, :, ::-1]
        image_scale = scale or max(1.0, 400.0 / max(image.shape[:2]))
        stem = os.path.join(output, os.path.splitext(os.path.basename(path))[0])
        panoptic = render_panoptic(rgb, outputs, metadata, image_scale)
        cv2.imwrite(stem + "_panoptic.png", panoptic[:, :, ::-1])
        written.append(stem + "_panoptic.png")
        if timecourse:
            instances = outputs["instances"].to("cpu")
            tiles = render_timecourse(rgb, instances, metadata, confidence_threshold)
            cv2.imwrite(stem + "_timecourse.png", tiles[:, :, ::-1])
            written.append(stem + "_timecourse.png")
        segments = outputs["panoptic_seg"][1]
        logger.info(f"{path}: {len(outputs['instances'])} instances, {len(segments)} segments")
    logger.info(f"wrote {len(written)} images to {output}")
    return written
