"""The "shapes" scene of the synthetic panoptic dataset.

Each image shows 2-3 textured background regions ("stuff": sky, grass, wall) separated by wavy
borders, with 2-5 shapes on top ("things": circle, square, triangle, star) that may occlude each
other. Some images also hold a crowd region (a cluster of small shapes of one class annotated as
one ``iscrowd`` segment), and about half leave a thin VOID band along the stuff borders. The
stuff background and the occlusion check are shared with the "contours" scene
(:mod:`.contours`); :mod:`.writer` writes the files.
"""

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy import ndimage

from .writer import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    PathLike,
    RenderResult,
    Segment,
    SyntheticScene,
    default_synthetic_root,
    ensure_synthetic_dataset,
    make_synthetic_dataset,
)

THING_CATEGORIES: Tuple[Dict, ...] = (
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60], "supercategory": "shape"},
    {"id": 2, "name": "square", "isthing": 1, "color": [0, 130, 200], "supercategory": "shape"},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [255, 180, 0], "supercategory": "shape"},
    {"id": 4, "name": "star", "isthing": 1, "color": [150, 60, 200], "supercategory": "shape"},
)
STUFF_CATEGORIES: Tuple[Dict, ...] = (
    {"id": 5, "name": "sky", "isthing": 0, "color": [120, 170, 235], "supercategory": "region"},
    {"id": 6, "name": "grass", "isthing": 0, "color": [70, 150, 60], "supercategory": "region"},
    {"id": 7, "name": "wall", "isthing": 0, "color": [160, 90, 70], "supercategory": "region"},
)
CATEGORIES: Tuple[Dict, ...] = THING_CATEGORIES + STUFF_CATEGORIES
_NAMES = {c["id"]: c["name"] for c in CATEGORIES}

GENERATOR_VERSION = 1
_CROWD_PROBABILITY = 0.2
_VOID_BAND_PROBABILITY = 0.5
_PLACEMENT_ATTEMPTS = 30
_MIN_VISIBLE_FRACTION = 0.35  # an occluded thing keeps at least this share of its shape ...
_MIN_VISIBLE_PIXELS = 40  # ... and at least this many pixels
_MIN_COMPONENT_PIXELS = 12  # every visible piece is at least this big (valid polygons)


def make_synthetic_panoptic(
    root: Optional[PathLike] = None,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
) -> Path:
    """Generate the synthetic shapes dataset (:data:`SHAPES_SCENE`) into ``root`` (default
    :func:`default_synthetic_root`); see :func:`make_synthetic_dataset`."""
    root = Path(root) if root is not None else default_synthetic_root()
    return make_synthetic_dataset(
        SHAPES_SCENE, root, num_train, num_val, image_size, seed, overwrite
    )


def ensure_synthetic_panoptic(root: Optional[PathLike] = None, **generation: int) -> Path:
    """:func:`ensure_synthetic_dataset` of the shapes scene (default root
    :func:`default_synthetic_root`)."""
    root = Path(root) if root is not None else default_synthetic_root()
    return ensure_synthetic_dataset(SHAPES_SCENE, root, **generation)


@dataclass
class _Thing:
    category_id: int
    iscrowd: bool
    full_area: int
    color: np.ndarray
    shading: np.ndarray  # (H, W) brightness factor


def pixel_grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(ys, xs): the (S, S) float32 row and column coordinates of the pixel centres."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return ys, xs


def render_stuff(
    rng: np.random.Generator,
    ys: np.ndarray,
    xs: np.ndarray,
    size: int,
    stuff_categories: Sequence[Dict] = STUFF_CATEGORIES,
) -> Tuple[np.ndarray, np.ndarray, List[int], np.ndarray]:
    """The textured stuff background: (image (S, S, 3) float32, region index map, the stuff
    category id of each region, VOID mask). ``stuff_categories`` are named sky/grass/wall."""
    region, region_stuff_ids, void = _stuff_layout(rng, ys, xs, size, stuff_categories)
    names = {c["id"]: c["name"] for c in stuff_categories}
    image = np.zeros((size, size, 3), np.float32)
    for region_index, stuff_id in enumerate(region_stuff_ids):
        texture = _TEXTURES[names[stuff_id]](rng, ys, xs, size)
        image[region == region_index] = texture[region == region_index]
    return image, region, region_stuff_ids, void


def stuff_segments(
    segment_ids: np.ndarray,
    labelled: np.ndarray,
    region: np.ndarray,
    region_stuff_ids: Sequence[int],
) -> List[Segment]:
    """Give every stuff region's ``labelled`` pixels a new segment id in ``segment_ids`` (in
    place, ids from 1); returns the segments."""
    segments: List[Segment] = []
    for region_index, stuff_id in enumerate(region_stuff_ids):
        where = labelled & (region == region_index)
        if where.any():
            segments.append(Segment(len(segments) + 1, stuff_id, False))
            segment_ids[where] = segments[-1].segment_id
    return segments


def _render_shapes(rng: np.random.Generator, size: int, params: Mapping[str, Any]) -> RenderResult:
    """One shapes image, its segment-id map (0 = VOID) and its segments (stuff, then things)."""
    ys, xs = pixel_grid(size)
    image, region, region_stuff_ids, void = render_stuff(rng, ys, xs, size)

    owner, things = _place_things(rng, ys, xs, size)
    for thing_index, thing in enumerate(things):
        where = owner == thing_index
        image[where] = thing.color * thing.shading[where, None]
    image += rng.normal(0.0, 3.0, image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    segment_ids = np.zeros((size, size), np.uint32)
    segments = stuff_segments(segment_ids, (owner < 0) & ~void, region, region_stuff_ids)
    for thing_index, thing in enumerate(things):
        where = owner == thing_index
        if where.any():
            segments.append(Segment(len(segments) + 1, thing.category_id, thing.iscrowd))
            segment_ids[where] = segments[-1].segment_id
    return image, segment_ids, segments


def _stuff_layout(
    rng: np.random.Generator,
    ys: np.ndarray,
    xs: np.ndarray,
    size: int,
    stuff_categories: Sequence[Dict],
) -> Tuple[np.ndarray, List[int], np.ndarray]:
    """2-3 horizontal bands with wavy borders, each a different stuff class; maybe a VOID band."""
    num_regions = 2 if rng.random() < 0.6 else 3
    stuff_ids = [int(i) for i in rng.permutation([c["id"] for c in stuff_categories])]
    if num_regions == 2:
        levels = [rng.uniform(0.3, 0.7)]
    else:
        levels = [rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.8)]
    region = np.zeros(ys.shape, np.int32)
    distance_to_border = np.full(ys.shape, np.inf, np.float32)
    for level in levels:
        amplitude = rng.uniform(0.02, 0.08) * size
        frequency, phase = rng.uniform(0.5, 2.0), rng.uniform(0.0, 2 * np.pi)
        border = level * size + amplitude * np.sin(2 * np.pi * frequency * xs / size + phase)
        region += ys > border
        distance_to_border = np.minimum(distance_to_border, np.abs(ys - border))
    void = distance_to_border < 1.0 if rng.random() < _VOID_BAND_PROBABILITY else None
    if void is None:
        void = np.zeros(ys.shape, bool)
    return region, stuff_ids[:num_regions], void


def _smooth_noise(
    rng: np.random.Generator, size: int, sigma_x: float, sigma_y: float
) -> np.ndarray:
    noise = rng.standard_normal((size, size)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y)
    return noise / (noise.std() + 1e-6)


def _jitter(rng: np.random.Generator, color: Sequence[float], amount: float) -> np.ndarray:
    return np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _sky(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    top, bottom = _jitter(rng, [105, 155, 230], 15), _jitter(rng, [185, 210, 245], 10)
    t = (ys / size)[..., None]
    clouds = np.clip(_smooth_noise(rng, size, 5.0, 3.0) - 0.6, 0.0, None)[..., None]
    return top * (1 - t) + bottom * t + 45.0 * clouds


def _grass(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    base = _jitter(rng, [70, 145, 55], 15)
    blades = _smooth_noise(rng, size, 0.7, 3.0)[..., None]
    return base * (1.0 + 0.18 * blades)


def _wall(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    brick_height = int(rng.integers(7, 11))
    brick_width = 2 * brick_height + int(rng.integers(0, 4))
    row = (ys // brick_height).astype(np.int64)
    shifted_x = xs + (row % 2) * (brick_width // 2)
    column = (shifted_x // brick_width).astype(np.int64)
    brick_colors = _jitter(rng, [165, 85, 65], 15) + rng.normal(
        0.0, 10.0, (size // brick_height + 2, size // brick_width + 3, 3)
    ).astype(np.float32)
    texture = brick_colors[row, column]
    mortar = (ys.astype(np.int64) % brick_height == 0) | (
        shifted_x.astype(np.int64) % brick_width == 0
    )
    texture[mortar] = _jitter(rng, [200, 195, 185], 8)
    return texture


_TEXTURES = {"sky": _sky, "grass": _grass, "wall": _wall}


def _shape_mask(
    category_id: int, cx: float, cy: float, radius: float, angle: float, ys, xs, size: int
) -> np.ndarray:
    shape = _NAMES[category_id]
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    if shape == "square":  # radius = half diagonal
        angles = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, radius)
    elif shape == "triangle":
        angles = angle + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, radius * 1.15)
    elif shape == "star":  # five points
        angles = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius * 1.2, radius * 0.5)
    else:
        raise ValueError(f"no shape drawing for category {shape!r}")
    # cv2 rasterises with pixel centres at integers; 4 fractional bits of sub-pixel precision.
    vertices = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1) - 0.5
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(vertices * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def random_color(rng: np.random.Generator) -> np.ndarray:
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0)
    return np.asarray(colorsys.hsv_to_rgb(hue, saturation, value), np.float32) * 255


def _random_shading(rng: np.random.Generator, ys, xs, size: int) -> np.ndarray:
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * xs + np.sin(direction) * ys) / size
    return (0.85 + 0.3 * ramp).astype(np.float32)


def visible_mask_is_valid(
    visible: np.ndarray, full_area: int, min_fraction: float = _MIN_VISIBLE_FRACTION
) -> bool:
    """An occluded (non-crowd) thing must stay recognisable and exactly describable by polygons:
    big enough (``min_fraction`` of its full area), no holes, no tiny or degenerate pieces."""
    area = int(visible.sum())
    if area < max(_MIN_VISIBLE_PIXELS, min_fraction * full_area):
        return False
    if (ndimage.binary_fill_holes(visible) != visible).any():
        return False
    labels, num_pieces = ndimage.label(visible, structure=np.ones((3, 3)))
    if num_pieces > 1 and np.bincount(labels.ravel())[1:].min() < _MIN_COMPONENT_PIXELS:
        return False
    contours, _ = cv2.findContours(
        visible.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return all(len(contour) >= 3 for contour in contours)


def _place_things(
    rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, size: int
) -> Tuple[np.ndarray, List[_Thing]]:
    """Paint things back to front; ``owner`` holds the index of the visible thing (-1: none)."""
    owner = np.full((size, size), -1, np.int32)
    things: List[_Thing] = []
    thing_ids = [c["id"] for c in THING_CATEGORIES]

    if rng.random() < _CROWD_PROBABILITY:  # a crowd: many small shapes of one class, one segment
        category_id = int(rng.choice(thing_ids))
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        crowd = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(4, 8))):
            dx, dy = rng.uniform(-0.1, 0.1, 2) * size
            radius = rng.uniform(0.025, 0.04) * size
            angle = rng.uniform(0, 2 * np.pi)
            crowd |= _shape_mask(category_id, cx + dx, cy + dy, radius, angle, ys, xs, size)
        owner[crowd] = 0
        things.append(
            _Thing(
                category_id,
                True,
                int(crowd.sum()),
                random_color(rng),
                _random_shading(rng, ys, xs, size),
            )
        )

    for _ in range(int(rng.integers(2, 6))):
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            category_id = int(rng.choice(thing_ids))
            radius = rng.uniform(0.07, 0.16) * size
            cx, cy = rng.uniform(radius * 1.25, size - radius * 1.25, 2)
            angle = rng.uniform(0, 2 * np.pi)
            mask = _shape_mask(category_id, cx, cy, radius, angle, ys, xs, size)
            trial = owner.copy()
            trial[mask] = len(things)
            if all(
                thing.iscrowd or visible_mask_is_valid(trial == index, thing.full_area)
                for index, thing in enumerate(things)
            ):
                owner = trial
                things.append(
                    _Thing(
                        category_id,
                        False,
                        int(mask.sum()),
                        random_color(rng),
                        _random_shading(rng, ys, xs, size),
                    )
                )
                break
    return owner, things


SHAPES_SCENE = SyntheticScene(
    name="shapes", version=GENERATOR_VERSION, categories=CATEGORIES, render=_render_shapes
)
"""Circles, squares, triangles and stars (things, possibly occluded; some crowds) on sky, grass
and wall bands (stuff)."""
