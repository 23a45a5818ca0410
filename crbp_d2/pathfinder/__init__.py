"""Pathfinder segmentation (C-RBP PF-9/14/20/25), no Detectron2. One job per module:

- ``config``: the experiment configuration (every key commented there).
- ``data.storage``: writing and reading generated datasets (numpy/OpenCV; no torch);
  ``data.datasets``: the torch datasets and the C-RBP transform. The generator itself is
  :mod:`crbp_d2.contours`.
- ``modeling``: the models and their input filter bank; ``losses``: the loss; ``dist``: the
  device, process-group and autocast set-up (both used by ``train`` and ``evaluation``).
- ``train``: the :class:`Trainer` loop.
- ``evaluation``: metrics, evaluation at several step counts, baselines, analyses, figures.
- ``experiments``: the CPU protocol, the CUDA check and the generator's speed.

The public names below are imported from their module on first use (PEP 562), so
``import crbp_d2.pathfinder`` imports neither torch nor OpenCV; e.g. the dataset generator's
worker processes import only :mod:`.data.storage`.
"""

import importlib

from .._extras import require_extra

require_extra("pathfinder", "crbp_d2.pathfinder")

# public name -> the module that defines it, relative to this package
_EXPORTS = {
    **dict.fromkeys(
        (
            "PRESET_LENGTHS",
            "GenerationError",
            "PathfinderGenerator",
            "PathfinderParams",
            "PathfinderSample",
            "generate_sample",
            "get_generator",
            "preset",
        ),
        "crbp_d2.contours.generator",
    ),
    **dict.fromkeys(("StoredPathfinder", "generate_dataset", "write_preview"), ".data.storage"),
    **dict.fromkeys(
        (
            "PathfinderTransform",
            "PathfinderOnTheFly",
            "PathfinderStored",
            "InMemoryPathfinder",
            "build_dataset",
            "random_flip_code",
        ),
        ".data.datasets",
    ),
    **dict.fromkeys(("build_model", "RecurrentSegmenter", "gabor_bank"), ".modeling"),
    **dict.fromkeys(("load_config", "ConfigError"), ".config"),
    **dict.fromkeys(("Trainer", "NonFiniteLossError"), ".train.loop"),
    "SegmentationMeter": ".evaluation.metrics",
    **dict.fromkeys(
        ("all_ink", "detect_marker", "evaluate_baselines", "flood_fill", "iou", "marker_only"),
        ".evaluation.baselines",
    ),
    **dict.fromkeys(("evaluate_model", "iou_over_steps"), ".evaluation.evaluator"),
    "load_trained": ".evaluation.analysis",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
