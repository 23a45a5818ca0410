"""Data for the Detectron2 side: COCO panoptic helpers, the synthetic panoptic datasets (the
"shapes" scene and the "contours" scene), and their registration with Detectron2.

Importing this package registers ``synthetic_panoptic_{train,val}_separated`` (and
``_stuffonly``), the larger ``synthetic_panoptic_large_{train,val}_*`` and
``synthetic_contours_{train,val}_*`` when Detectron2 is installed; the files are generated on
first use. The format helpers and the generators need only numpy, Pillow, OpenCV, SciPy and
pycocotools.
"""

import importlib.util

from .panoptic_utils import (
    SEMANTIC_IGNORE_LABEL,
    id2rgb,
    panoptic_to_separated_semantic,
    read_panoptic_png,
    rgb2id,
    separated_stuff_label_map,
    write_separated_semantic,
)
from .synthetic_contours import CONTOUR_CATEGORIES, CONTOURS_SCENE
from .synthetic_panoptic import (
    CATEGORIES,
    SHAPES_SCENE,
    STUFF_CATEGORIES,
    THING_CATEGORIES,
    SyntheticScene,
    contact_sheet,
    datasets_root,
    default_synthetic_root,
    ensure_synthetic_dataset,
    ensure_synthetic_panoptic,
    make_synthetic_dataset,
    make_synthetic_panoptic,
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

if importlib.util.find_spec("detectron2") is not None:
    from .. import _compat  # noqa: F401  (before detectron2)
    # isort: split

    from .datasets import (
        SYNTHETIC_CONTOURS_DATASETS,
        SYNTHETIC_CONTOURS_GENERATION,
        SYNTHETIC_PANOPTIC_DATASETS,
        SYNTHETIC_PANOPTIC_LARGE_DATASETS,
        SYNTHETIC_PANOPTIC_LARGE_GENERATION,
        UnknownDatasetError,
        check_dataset_files,
        check_dataset_name,
        check_dataset_names,
        check_mask_format,
        check_num_classes,
        prepare_dataset_files,
        register_all_synthetic,
        register_synthetic_panoptic,
        synthetic_panoptic_metadata,
    )

    __all__ += [
        "SYNTHETIC_CONTOURS_DATASETS",
        "SYNTHETIC_CONTOURS_GENERATION",
        "SYNTHETIC_PANOPTIC_DATASETS",
        "SYNTHETIC_PANOPTIC_LARGE_DATASETS",
        "SYNTHETIC_PANOPTIC_LARGE_GENERATION",
        "UnknownDatasetError",
        "check_dataset_name",
        "check_dataset_files",
        "check_dataset_names",
        "check_mask_format",
        "check_num_classes",
        "prepare_dataset_files",
        "register_all_synthetic",
        "register_synthetic_panoptic",
        "synthetic_panoptic_metadata",
    ]
    register_all_synthetic()  # import side effect, as in Detectron2 projects; idempotent
