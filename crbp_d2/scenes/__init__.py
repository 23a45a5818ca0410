"""The synthetic scenes and the COCO panoptic format helpers, without Detectron2.

The "shapes" scene (:mod:`.shapes`) and the "contours" scene (:mod:`.contours`, drawn with the
Pathfinder generator of :mod:`crbp_d2.contours`) are written to disk in Detectron2's COCO panoptic
layout by :mod:`.writer`; :mod:`.panoptic` converts between the panoptic PNG and the "separated"
semantic format. They need only numpy, Pillow, OpenCV, SciPy and pycocotools, so that
``datasets/make_synthetic_panoptic.py`` runs without Detectron2; the Detectron2 front-end
(:mod:`crbp_d2.rfpn.data`) registers them.
"""

from .contours import CONTOUR_CATEGORIES, CONTOURS_SCENE
from .panoptic import (
    SEMANTIC_IGNORE_LABEL,
    id2rgb,
    panoptic_to_separated_semantic,
    read_panoptic_png,
    rgb2id,
    separated_stuff_label_map,
    write_separated_semantic,
)
from .shapes import (
    CATEGORIES,
    SHAPES_SCENE,
    STUFF_CATEGORIES,
    THING_CATEGORIES,
    ensure_synthetic_panoptic,
    make_synthetic_panoptic,
)
from .writer import (
    SyntheticScene,
    contact_sheet,
    datasets_root,
    default_synthetic_root,
    ensure_synthetic_dataset,
    make_synthetic_dataset,
    split_paths,
)

__all__ = [
    "SEMANTIC_IGNORE_LABEL",
    "id2rgb",
    "panoptic_to_separated_semantic",
    "read_panoptic_png",
    "rgb2id",
    "separated_stuff_label_map",
    "write_separated_semantic",
    "CATEGORIES",
    "CONTOUR_CATEGORIES",
    "CONTOURS_SCENE",
    "SHAPES_SCENE",
    "STUFF_CATEGORIES",
    "SyntheticScene",
    "THING_CATEGORIES",
    "contact_sheet",
    "datasets_root",
    "default_synthetic_root",
    "ensure_synthetic_dataset",
    "ensure_synthetic_panoptic",
    "make_synthetic_dataset",
    "make_synthetic_panoptic",
    "split_paths",
]
