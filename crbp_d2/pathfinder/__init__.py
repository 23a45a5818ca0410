"""Pathfinder segmentation (C-RBP PF-9/14/20/25): generator, storage, datasets, baselines.

Light imports only (numpy, OpenCV, Pillow); the torch datasets live in ``crbp_d2.pathfinder.data``
and are imported lazily from here. No Detectron2.
"""
from .baselines import detect_marker, evaluate_baselines, flood_fill, iou, marker_only
from .generator import (
    PRESET_LENGTHS,
    GenerationError,
    PathfinderGenerator,
    PathfinderParams,
    PathfinderSample,
    generate_sample,
    get_generator,
    preset,
)
from .storage import StoredPathfinder, generate_dataset, write_preview

_TORCH_EXPORTS = (
    "PathfinderTransform",
    "PathfinderOnTheFly",
    "PathfinderStored",
    "random_flip_code",
)

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
    *_TORCH_EXPORTS,
]


def __getattr__(name: str):
    if name in _TORCH_EXPORTS:
        from . import data

        return getattr(data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
