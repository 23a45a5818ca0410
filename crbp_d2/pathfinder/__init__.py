"""Pathfinder segmentation (C-RBP PF-9/14/20/25): generator, storage, datasets, baselines,
models, trainer and analyses.

Light imports only (numpy, OpenCV, Pillow); everything that needs torch (datasets, models,
trainer, analyses) is imported lazily from here. No Detectron2.
"""

import importlib

from crbp_d2.contours.generator import (
    PRESET_LENGTHS,
    GenerationError,
    PathfinderGenerator,
    PathfinderParams,
    PathfinderSample,
    generate_sample,
    get_generator,
    preset,
)

from .baselines import detect_marker, evaluate_baselines, flood_fill, iou, marker_only
from .storage import StoredPathfinder, generate_dataset, write_preview

# name -> the torch-dependent submodule that defines it (imported on first use)
_LAZY_EXPORTS = {
    "PathfinderTransform": "data",
    "PathfinderOnTheFly": "data",
    "PathfinderStored": "data",
    "random_flip_code": "data",
    "build_model": "models",
    "RecurrentSegmenter": "models",
    "gabor_bank": "filters",
    "SegmentationMeter": "metrics",
    "load_config": "config",
    "ConfigError": "config",
    "Trainer": "trainer",
    "NonFiniteLossError": "trainer",
    "load_trained": "analysis",
}

__all__ = [
    "PRESET_LENGTHS",
    "GenerationError",
    "PathfinderGenerator",
    "PathfinderParams",
    "PathfinderSample",
    "generate_sample",
    "get_generator",
    "preset",
    "StoredPathfinder",
    "generate_dataset",
    "write_preview",
    "detect_marker",
    "evaluate_baselines",
    "flood_fill",
    "iou",
    "marker_only",
    *_LAZY_EXPORTS,
]


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
