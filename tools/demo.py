#!/usr/bin/env python
"""Panoptic predictions of a Panoptic FPN / R-FPN checkpoint on images, drawn with Detectron2's
Visualizer; ``--timecourse`` also draws the instance masks after every recurrent step (like
Fig. 3c of Linsley et al. 2020).

Example::

    python tools/demo.py --config-file configs/quick/R-FPN-R50-CRBP-synthetic.yaml \\
        --input datasets/synthetic_panoptic/val --output output/demo --timecourse \\
        MODEL.WEIGHTS output/quick/R-FPN-R50-CRBP-synthetic/model_final.pth

For each image ``x.jpg`` it writes ``x_panoptic.png`` and, with ``--timecourse``,
``x_timecourse.png`` (one panel per step t = 1..T, T = the test steps or ``--steps``).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from typing import List, Optional, Sequence

import crbp_d2.config  # noqa: F401  (first: Detectron2 compatibility + registration)

# isort: split
import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.colormap import colormap
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

import crbp_d2.data  # noqa: F401  (registers the synthetic panoptic datasets)
import crbp_d2.modeling  # noqa: F401  (registers RecurrentMaskHead)
from crbp_d2.config import check_weights_file, get_crbp_cfg
from crbp_d2.data import check_dataset_name, prepare_dataset_files
from crbp_d2.modeling import instances_at_step, recurrent_mask_head

logger = logging.getLogger("crbp_d2.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or globs")
    parser.add_argument("--output", required=True, help="folder for the rendered images")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--timecourse", action="store_true", help="draw masks after every step")
    parser.add_argument("--steps", type=int, default=None, help="steps of the timecourse")
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    parser.add_argument(
        "--scale", type=float, default=None, help="drawing scale (default: panels >= 400 px)"
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    return parser.parse_args(argv)


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


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner, sized to the panel."""
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


def render_timecourse(
    rgb: np.ndarray, instances, metadata, threshold: float, steps: int, scale: float
) -> np.ndarray:
    """One panel per step t = 1..steps: the detections with their masks after t steps (each
    instance keeps its colour across panels)."""
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
        panels.append(_label(drawn.get_image(), f"t={t}"))
    return grid(panels)


def main(args: argparse.Namespace) -> List[str]:
    """Render every input; returns the written files."""
    cfg = get_crbp_cfg(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    check_weights_file(cfg)
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: the demo takes class names from DATASETS.TEST[0]")
    check_dataset_name(cfg.DATASETS.TEST[0], "DATASETS.TEST[0]")
    prepare_dataset_files(cfg.DATASETS.TEST[0])  # lazily generated datasets: make their files
    cfg.freeze()
    paths = expand_inputs(args.input)[: args.max_images]
    os.makedirs(args.output, exist_ok=True)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])

    predictor = DefaultPredictor(cfg)
    if args.timecourse:
        head = recurrent_mask_head(predictor.model)
        if args.steps is not None:
            head.test_steps = args.steps
        head.return_timecourse = True
    written = []
    for path in paths:
        image = read_image(path, format="BGR")
        outputs = predictor(image)
        rgb = image[:, :, ::-1]
        scale = args.scale or max(1.0, 400.0 / max(image.shape[:2]))
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        panoptic, segments = outputs["panoptic_seg"]
        visualizer = Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
        drawn = visualizer.draw_panoptic_seg(panoptic.to("cpu"), segments)
        cv2.imwrite(stem + "_panoptic.png", drawn.get_image()[:, :, ::-1])
        written.append(stem + "_panoptic.png")
        if args.timecourse:
            instances = outputs["instances"].to("cpu")
            steps = instances.pred_masks_steps.shape[1]
            tiles = render_timecourse(
                rgb, instances, metadata, args.confidence_threshold, steps, scale
            )
            cv2.imwrite(stem + "_timecourse.png", tiles[:, :, ::-1])
            written.append(stem + "_timecourse.png")
        logger.info(f"{path}: {len(outputs['instances'])} instances, {len(segments)} segments")
    logger.info(f"wrote {len(written)} images to {args.output}")
    return written


def cli(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    setup_logger(name="crbp_d2")
    setup_logger(name="detectron2", abbrev_name="d2")
    try:
        main(args)
    except (FileNotFoundError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        sys.exit(f"demo.py: error: {message}")


if __name__ == "__main__":
    cli()
