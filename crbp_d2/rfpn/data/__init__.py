"""Data for the Detectron2 front-end: registration and checks of the datasets, and the resumable
train loader.

Importing this package (which ``import crbp_d2.rfpn`` does) registers
``synthetic_panoptic_{train,val}_separated`` (and ``_stuffonly``), the larger
``synthetic_panoptic_large_{train,val}_*`` and ``synthetic_contours_{train,val}_*``; the files are
generated on first use. The scenes and the format helpers themselves, which need no Detectron2,
are :mod:`crbp_d2.scenes` (re-exported here).
"""

from ...scenes import *  # noqa: F403  (the scenes and format helpers, re-exported)
from ...scenes import __all__ as _scene_names
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

__all__ = _scene_names + [
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
