"""The Pathfinder contour generator: dashed, curved contours drawn with the geometry of the
original ``snakes2`` code (numpy, OpenCV, Pillow; neither torch nor Detectron2).

Both front-ends use it: the Pathfinder task (``crbp_d2.pathfinder``) draws its images with it,
and the Detectron2 side's synthetic "contours" panoptic set draws its contour things with it.
"""

from .generator import (
    PRESET_LENGTHS,
    ContourMeta,
    GenerationError,
    PathfinderGenerator,
    PathfinderParams,
    PathfinderSample,
    SampleMeta,
    generate_sample,
    get_generator,
    preset,
    sample_rng,
)

__all__ = [
    "PRESET_LENGTHS",
    "ContourMeta",
    "GenerationError",
    "PathfinderGenerator",
    "PathfinderParams",
    "PathfinderSample",
    "SampleMeta",
    "generate_sample",
    "get_generator",
    "preset",
    "sample_rng",
]
