"""The synthetic "contours" panoptic set: long, thin, curved contours that cross one another.

Where the mask head has to trace. Every image holds several *contour* things of one class, drawn
in one colour, that cross and touch each other, so that a contour's box holds pieces of other
contours and only following the curve separates its own instance (the Pathfinder problem, inside
an instance-segmentation box); a few *disks* (a compact class, each in its own colour) and the
sky/grass/wall stuff bands of the shapes set complete the scene.

The curves are Pathfinder paths: :class:`crbp_d2.contours.PathfinderGenerator` grows them (dash
by dash, with the original's turn law and collision rules) on a canvas ``geometry_scale`` times
the image size, and each contour is drawn as one ``contour_width``-pixel polyline through its
dash ends, scaled down. Contours of one generator sample never touch (the generator keeps them
apart); contours of different samples are drawn over one another, hence the crossings. The one
drawn later owns the crossing pixels (it occludes the other).

Instance masks are stored as exact RLE (train with ``INPUT.MASK_FORMAT bitmask``): COCO polygons
through the boundary pixel centres would lose about a sixth of a 6-px contour.

Sizes (defaults): 160-px images, contours 6 px wide of 14 Pathfinder dashes (PF14 geometry on a
320-px canvas, scaled by 1/2, so about 75 px of curve). A contour is kept only if the longer side
of its box is at most ``14 * contour_width`` px, so a cell of the 14x14 RoIAlign grid of its box
(box side / 14 <= 6 px) is never wider than the contour: the contour covers at least one RoI cell
across its width.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import cv2
import numpy as np

from ..contours import GenerationError, PathfinderGenerator, PathfinderParams, get_generator
from .shapes import (
    STUFF_CATEGORIES,
    pixel_grid,
    random_color,
    render_stuff,
    stuff_segments,
    visible_mask_is_valid,
)
from .writer import Segment, SyntheticScene

__all__ = [
    "CONTOUR_CATEGORIES",
    "CONTOURS_SCENE",
    "CONTOUR_DEFAULTS",
    "check_contour_parameters",
    "render_contours",
]

CONTOUR_THING_CATEGORIES: Tuple[Dict, ...] = (
    {"id": 1, "name": "contour", "isthing": 1, "color": [250, 190, 30], "supercategory": "curve"},
    {"id": 2, "name": "disk", "isthing": 1, "color": [0, 130, 200], "supercategory": "shape"},
)
# the shapes set's stuff classes, renumbered after the things
_STUFF = tuple(dict(c, id=3 + i) for i, c in enumerate(STUFF_CATEGORIES))
CONTOUR_CATEGORIES: Tuple[Dict, ...] = CONTOUR_THING_CATEGORIES + _STUFF
_CONTOUR_ID, _DISK_ID = 1, 2

CONTOUR_DEFAULTS: Dict[str, Any] = {
    "contour_length": 14,  # Pathfinder dashes per contour (PF14)
    "contour_width": 6,  # px in the image
    "geometry_scale": 2,  # the paths are grown on a canvas this many times the image size
    "min_contours": 3,
    "max_contours": 5,
    "max_disks": 2,
}
_MIN_VISIBLE_FRACTION = 0.5  # an occluded contour keeps at least half of its pixels
_PLACEMENT_ATTEMPTS = 12
_MAX_PAIR_RESTARTS = 400  # per generator sample; a contour that cannot fit fails fast


def _geometry_params(image_size: int, params: Mapping[str, Any]) -> PathfinderParams:
    scale = int(params["geometry_scale"])
    canvas = image_size * scale
    return PathfinderParams(
        contour_length=int(params["contour_length"]),
        canvas_size=canvas,
        padding=max(int(round(0.04 * canvas)), 2 * scale),
        num_distractors=0,
        max_pair_restarts=_MAX_PAIR_RESTARTS,
    )


def check_contour_parameters(image_size: int, params: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the parameter when a contours scene cannot be generated."""
    for name in ("contour_length", "contour_width", "geometry_scale", "min_contours"):
        value = params[name]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"contours scene: {name} must be an integer >= 1, got {value!r}")
    if params["max_contours"] < params["min_contours"]:
        raise ValueError(
            f"contours scene: max_contours ({params['max_contours']}) < min_contours "
            f"({params['min_contours']})"
        )
    if params["max_disks"] < 0:
        raise ValueError(f"contours scene: max_disks must be >= 0, got {params['max_disks']}")
    geometry = _geometry_params(image_size, params)
    width = int(params["contour_width"])
    try:
        contours = [
            c for seed in range(4) for c in get_generator(geometry).sample(seed, 0).meta.contours
        ]
    except (GenerationError, ValueError) as err:
        raise ValueError(
            f"contours scene: a contour of contour_length={params['contour_length']} Pathfinder "
            f"dashes does not fit a {image_size}-px image (grown on a {geometry.canvas_size}-px "
            f"canvas): use a shorter contour_length or a larger image_size ({err})"
        ) from None
    if not any(_fits_roi_grid(c.tails, c.heads, params) for c in contours):
        longest = min(_box_side(c.tails, c.heads, params) for c in contours)
        raise ValueError(
            f"contours scene: contours of contour_length={params['contour_length']} span "
            f"~{longest:.0f} px or more, over 14 x contour_width={width} px, so a contour would "
            "be thinner than one cell of the 14x14 RoI grid of its box: use a wider "
            "contour_width or a shorter contour_length"
        )


def _box_side(tails: np.ndarray, heads: np.ndarray, params: Mapping[str, Any]) -> float:
    points = np.concatenate([tails, heads]) / params["geometry_scale"]
    return float((points.max(axis=0) - points.min(axis=0)).max())


def _fits_roi_grid(tails: np.ndarray, heads: np.ndarray, params: Mapping[str, Any]) -> bool:
    """Whether the drawn contour's box (centre line + width) is at most 14 widths across."""
    width = int(params["contour_width"])
    return _box_side(tails, heads, params) + width <= 14 * width


def _polyline(tails: np.ndarray, heads: np.ndarray, scale: int) -> np.ndarray:
    """(2n, 2) float (x, y) image coordinates through the dash ends in drawing order."""
    rows_cols = np.stack([tails, heads], axis=1).reshape(-1, 2).astype(np.float64)
    return (rows_cols[:, ::-1] + 0.5) / scale - 0.5  # (row, col) -> (x, y), pixel centres


def _draw_contour(points: np.ndarray, width: int, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    fixed = np.round(points * 16).astype(np.int32)  # 4 fractional bits
    cv2.polylines(mask, [fixed], False, 1, thickness=width, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _sample_contours(
    rng: np.random.Generator, image_size: int, params: Mapping[str, Any], count: int
) -> List[np.ndarray]:
    """``count`` contour masks (S, S) bool, each at most 14 contour widths across."""
    generator: PathfinderGenerator = get_generator(_geometry_params(image_size, params))
    width, scale = int(params["contour_width"]), int(params["geometry_scale"])
    masks: List[np.ndarray] = []
    for _ in range(count * _PLACEMENT_ATTEMPTS):
        seed = int(rng.integers(0, 2**31))
        for contour in generator.sample(seed, 0).meta.contours:
            if len(masks) < count and _fits_roi_grid(contour.tails, contour.heads, params):
                points = _polyline(contour.tails, contour.heads, scale)
                masks.append(_draw_contour(points, width, image_size))
        if len(masks) == count:
            break
    return masks


def render_contours(
    rng: np.random.Generator, size: int, params: Mapping[str, Any]
) -> Tuple[np.ndarray, np.ndarray, List[Segment]]:
    """One contours image (S, S, 3) uint8, its segment-id map (0 = VOID) and its segments."""
    ys, xs = pixel_grid(size)
    image, region, region_stuff_ids, void = render_stuff(rng, ys, xs, size, _STUFF)
    owner = np.full((size, size), -1, np.int32)
    categories: List[int] = []
    full_areas: List[int] = []

    def accept(mask: np.ndarray, category_id: int) -> bool:
        """Paint ``mask`` on top if every earlier thing stays valid."""
        trial = owner.copy()
        trial[mask] = len(categories)
        areas = full_areas + [int(mask.sum())]
        ok = all(
            visible_mask_is_valid(trial == index, area, _MIN_VISIBLE_FRACTION)
            for index, area in enumerate(areas)
        )
        if ok:
            owner[...] = trial
            categories.append(category_id)
            full_areas.append(areas[-1])
        return ok

    num_disks = int(rng.integers(0, int(params["max_disks"]) + 1))
    disk_colors = []
    for _ in range(num_disks):
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            radius = rng.uniform(0.06, 0.11) * size
            cx, cy = rng.uniform(radius + 2, size - radius - 2, 2)
            if accept((xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2, _DISK_ID):
                disk_colors.append(random_color(rng))
                break
    count = int(rng.integers(int(params["min_contours"]), int(params["max_contours"]) + 1))
    for mask in _sample_contours(rng, size, params, count):
        accept(mask, _CONTOUR_ID)

    contour_color = random_color(rng)  # one colour for every contour of the image
    colors = iter(disk_colors)
    for index, category_id in enumerate(categories):
        color = contour_color if category_id == _CONTOUR_ID else next(colors)
        image[owner == index] = color
    image += rng.normal(0.0, 3.0, image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    segment_ids = np.zeros((size, size), np.uint32)
    segments = stuff_segments(segment_ids, (owner < 0) & ~void, region, region_stuff_ids)
    for index, category_id in enumerate(categories):
        where = owner == index
        if where.any():
            segments.append(Segment(len(segments) + 1, category_id, False))
            segment_ids[where] = segments[-1].segment_id
    return image, segment_ids, segments


CONTOURS_SCENE = SyntheticScene(
    name="contours",
    version=1,
    categories=CONTOUR_CATEGORIES,
    render=render_contours,
    defaults=CONTOUR_DEFAULTS,
    check=check_contour_parameters,
    instance_masks="rle",  # polygons through pixel centres lose ~1 px of a 6-px contour's width
)
"""Crossing Pathfinder contours (one class, one colour) and disks on sky/grass/wall bands."""
