"""Precomputed dash, footprint and marker patches for the Pathfinder generator.

Every element the generator draws sits on the integer pixel grid, and its shape only depends on a
small discrete set of directions:

* an *extension* dash is one of the ``J`` candidate heads on the circle of radius ``L + m`` around
  the current pivot (49 for the default settings), so its shape relative to the pivot is fixed;
* a *seed* dash points along an integer number of degrees (360 shapes), relative to its tail;
* the marker is one disk.

So the anti-aliased ink, the soft footprint (the dash grown by the margin ``m``) and the footprint
dilated by a disk of radius ``m`` are rendered once per shape (``aa``x supersampling, then a
Lanczos downsample of a uint8 raster, as the original did through ``scipy.misc.imresize``), and the
generator only pastes small patches. ``ShapeBank`` holds these tables for one parameter set.

Coordinates are (row, col); a direction ``theta`` moves by ``(sin theta, cos theta)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

_LANCZOS = Image.Resampling.LANCZOS if hasattr(Image, "Resampling") else Image.LANCZOS
# Lanczos-3 support (in output pixels) plus one pixel of slack around every rendered element.
_RENDER_SLACK = 4


def snap_ceil(row: float, col: float) -> Tuple[int, int]:
    """The original's translation snap: ``ceil`` of each coordinate (with a tolerance for
    floating-point noise such as ``5 * cos(90 deg) = 3e-16``)."""
    return int(math.ceil(row - 1e-9)), int(math.ceil(col - 1e-9))


def unit(theta: float) -> Tuple[float, float]:
    """Unit step ``(sin theta, cos theta)`` in (row, col) order."""
    return math.sin(theta), math.cos(theta)


def disk_kernel(radius: float) -> np.ndarray:
    """A flat disk structuring element, uint8 ``(2r+1, 2r+1)``."""
    r = int(math.floor(radius))
    dr, dc = np.mgrid[-r : r + 1, -r : r + 1]
    return (dr**2 + dc**2 <= radius**2 + 1e-9).astype(np.uint8)


def candidate_offsets(radius: int) -> np.ndarray:
    """Candidate head offsets ``(J, 2)`` int around a pivot: one point per pixel of arc on the
    circle of ``radius``, truncated to the pixel grid (floor, the coordinates being positive),
    de-duplicated in order of angle. 49 points for radius 8."""
    count = int(math.ceil(2 * math.pi * radius))
    seen: Dict[Tuple[int, int], None] = {}
    for i in range(count):
        angle = i / radius
        offset = (
            math.floor(radius * math.sin(angle) + 1e-9),
            math.floor(radius * math.cos(angle) + 1e-9),
        )
        seen.setdefault(offset, None)
    return np.array(list(seen), dtype=np.int64)


@dataclass
class Patch:
    """A small image placed at ``anchor + offset`` (top-left corner, row/col)."""

    values: np.ndarray  # (h, w) uint8 for ink, float32 in [0, 1] for footprints
    offset: Tuple[int, int]

    def __post_init__(self) -> None:
        # Plain ints for the generator's hot loop.
        self.dr, self.dc = int(self.offset[0]), int(self.offset[1])
        self.h, self.w = (int(v) for v in self.values.shape)


@dataclass
class Shape:
    """One drawable element relative to its anchor (the pivot for extension dashes, the tail
    for seed dashes and for the marker)."""

    ink: Patch  # uint8 anti-aliased ink
    foot: Patch  # float32 soft footprint (element grown by the margin)
    foot_dilated: Patch  # float32 footprint dilated by a disk of radius margin
    seed_kernel: np.ndarray  # (K, 2) int offsets where the footprint is non-zero


def _render(
    segments: Sequence[Tuple[Tuple[float, float], Tuple[float, float]]],
    disk_radius: float,
    thickness: float,
    margin: float,
    aa: int,
    end_extension: float,
) -> Tuple[Patch, Patch]:
    """Render flat-ended segments (or a disk at the origin when ``segments`` is empty) at
    ``aa``x, grow the raster by a disk of radius ``margin * aa`` for the footprint, and Lanczos-
    downsample both uint8 rasters to 1x. Returns (ink uint8 patch, footprint float32 patch)."""
    points = [p for seg in segments for p in seg] or [(0.0, 0.0)]
    reach = (disk_radius if not segments else thickness / 2 + end_extension) + margin
    rows = [p[0] for p in points]
    cols = [p[1] for p in points]
    r0 = int(math.floor(min(rows) - reach)) - _RENDER_SLACK
    r1 = int(math.ceil(max(rows) + reach)) + _RENDER_SLACK
    c0 = int(math.floor(min(cols) - reach)) - _RENDER_SLACK
    c1 = int(math.ceil(max(cols) + reach)) + _RENDER_SLACK
    h, w = r1 - r0 + 1, c1 - c0 + 1
    # Sub-pixel centres in 1x coordinates: pixel R spans [R - 0.5, R + 0.5]. Like a raster library
    # drawing at integer aa-x pixel coordinates (aa * p), geometry point p lands on the centre of
    # sub-pixel aa * p, i.e. at p - (aa - 1) / (2 aa) in 1x coordinates.
    shift = (aa - 1) / (2 * aa)
    sub_r = r0 - 0.5 + (np.arange(h * aa) + 0.5) / aa + shift
    sub_c = c0 - 0.5 + (np.arange(w * aa) + 0.5) / aa + shift
    grid_r, grid_c = np.meshgrid(sub_r, sub_c, indexing="ij")
    ink = np.zeros(grid_r.shape, dtype=bool)
    if not segments:
        ink |= grid_r**2 + grid_c**2 <= disk_radius**2 + 1e-9
    for (pr, pc), (qr, qc) in segments:
        length = math.hypot(qr - pr, qc - pc)
        if length < 1e-9:
            ur, uc = 0.0, 1.0
        else:
            ur, uc = (qr - pr) / length, (qc - pc) / length
        along = (grid_r - pr) * ur + (grid_c - pc) * uc
        across = -(grid_r - pr) * uc + (grid_c - pc) * ur
        ink |= (
            (along >= -end_extension - 1e-9)
            & (along <= length + end_extension + 1e-9)
            & (np.abs(across) <= thickness / 2 + 1e-9)
        )
    ink_raster = ink.astype(np.uint8) * 255
    foot_raster = cv2.dilate(ink_raster, disk_kernel(margin * aa)) if margin > 0 else ink_raster

    def down(raster: np.ndarray) -> np.ndarray:
        if aa == 1:
            return raster.copy()
        return np.asarray(Image.fromarray(raster, mode="L").resize((w, h), _LANCZOS))

    ink_1x = down(ink_raster)
    foot_1x = down(foot_raster).astype(np.float32) / 255.0
    return Patch(_trim(ink_1x)[0], _trim_offset(ink_1x, (r0, c0))), Patch(
        _trim(foot_1x)[0], _trim_offset(foot_1x, (r0, c0))
    )


def _trim(values: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int]]:
    nz_r = np.flatnonzero(values.any(axis=1))
    nz_c = np.flatnonzero(values.any(axis=0))
    if nz_r.size == 0:
        return values[:1, :1].copy(), (0, 0)
    return (
        np.ascontiguousarray(values[nz_r[0] : nz_r[-1] + 1, nz_c[0] : nz_c[-1] + 1]),
        (int(nz_r[0]), int(nz_c[0])),
    )


def _trim_offset(values: np.ndarray, origin: Tuple[int, int]) -> Tuple[int, int]:
    _, (dr, dc) = _trim(values)
    return origin[0] + dr, origin[1] + dc


def _dilate_patch(foot: Patch, margin: float) -> Patch:
    r = int(math.floor(margin))
    if r <= 0:
        return Patch(foot.values.copy(), foot.offset)
    padded = np.pad(foot.values, r)
    dilated = cv2.dilate(padded, disk_kernel(margin))
    return Patch(dilated.astype(np.float32), (foot.offset[0] - r, foot.offset[1] - r))


def _make_shape(ink: Patch, foot: Patch, margin: float) -> Shape:
    nz = np.argwhere(foot.values > 0)
    kernel = (nz + np.array(foot.offset)).astype(np.int64)
    return Shape(ink=ink, foot=foot, foot_dilated=_dilate_patch(foot, margin), seed_kernel=kernel)


class ShapeBank:
    """All patches and lookup tables for one geometry.

    Attributes (``J`` = number of candidate directions):
        head_offsets: (J, 2) int, candidate heads relative to the pivot.
        tail_offsets: (J, 2) int, the other end of each extension dash, relative to the pivot.
        directions: (J,) float, direction of each candidate (radians, atan2(drow, dcol)).
        next_pivot: (J, 2) int, next pivot relative to the current pivot.
        extension: list of J ``Shape`` anchored at the pivot.
        seed: list of 360 ``Shape`` anchored at the tail, for integer degrees -180..179.
        seed_head, seed_pivot, seed_next_pivot: (360, 2) int, relative to the tail.
        seed_directions: (360,) float radians.
        marker: ``Shape`` anchored at its centre (ink = the disk, foot = the disk grown by m).
        turn_weights: (J + 360, J) float64, cos^2(min(c |delta|, pi/2)) for a previous direction
            (rows 0..J-1: extension directions, rows J..J+359: seed degrees) and each candidate.
        turn_angles: (J + 360, J) float64, the corresponding signed turn delta in (-pi, pi].
        reach: how far (px) any patch or pivot can extend from a point the generator visits.
    """

    def __init__(
        self,
        paddle_length: float,
        paddle_thickness: float,
        paddle_margin: float,
        continuity: float,
        marker_radius: float,
        antialias_scale: int,
        end_extension: float = 0.25,
    ) -> None:
        length, margin = float(paddle_length), float(paddle_margin)
        self.radius = int(round(length + margin))
        self.pitch = length + 2 * margin
        head_offsets = candidate_offsets(self.radius)
        self.head_offsets = head_offsets
        self.num_directions = len(head_offsets)
        self.directions = np.arctan2(head_offsets[:, 0], head_offsets[:, 1]).astype(np.float64)
        shape_args = dict(
            thickness=float(paddle_thickness),
            margin=margin,
            aa=int(antialias_scale),
            end_extension=end_extension,
        )

        self.extension: List[Shape] = []
        next_pivot, tail_offsets = [], []
        for (hr, hc), phi in zip(head_offsets.tolist(), self.directions.tolist()):
            ur, uc = unit(phi)
            tail = snap_ceil(hr - length * ur, hc - length * uc)
            ink, foot = _render([((tail[0], tail[1]), (hr, hc))], 0.0, **shape_args)
            self.extension.append(_make_shape(ink, foot, margin))
            tail_offsets.append(tail)
            next_pivot.append(snap_ceil(self.pitch * ur, self.pitch * uc))
        self.next_pivot = np.array(next_pivot, dtype=np.int64)
        self.tail_offsets = np.array(tail_offsets, dtype=np.int64)

        self.seed_directions = np.deg2rad(np.arange(-180, 180, dtype=np.float64))
        self.seed: List[Shape] = []
        seed_head, seed_pivot, seed_next = [], [], []
        for theta in self.seed_directions.tolist():
            ur, uc = unit(theta)
            head = snap_ceil(length * ur, length * uc)
            pivot = snap_ceil(head[0] - (length + margin) * ur, head[1] - (length + margin) * uc)
            nxt = snap_ceil(pivot[0] + self.pitch * ur, pivot[1] + self.pitch * uc)
            ink, foot = _render([((0.0, 0.0), (float(head[0]), float(head[1])))], 0.0, **shape_args)
            self.seed.append(_make_shape(ink, foot, margin))
            seed_head.append(head)
            seed_pivot.append(pivot)
            seed_next.append(nxt)
        self.seed_head = np.array(seed_head, dtype=np.int64)
        self.seed_pivot = np.array(seed_pivot, dtype=np.int64)
        self.seed_next_pivot = np.array(seed_next, dtype=np.int64)

        ink, foot = _render([], float(marker_radius), **shape_args)
        self.marker = _make_shape(ink, foot, margin)

        previous = np.concatenate([self.directions, self.seed_directions])
        delta = self.directions[None, :] - previous[:, None]
        delta = (delta + np.pi) % (2 * np.pi) - np.pi
        delta[np.isclose(delta, -np.pi)] = np.pi
        self.turn_angles = delta
        self.turn_weights = np.cos(np.minimum(continuity * np.abs(delta), np.pi / 2)) ** 2
        self.turn_weights[self.turn_weights < 1e-12] = 0.0

        patches = [
            p
            for s in self.extension + self.seed + [self.marker]
            for p in (s.ink, s.foot, s.foot_dilated)
        ]
        extent = max(
            max(
                abs(p.offset[0]),
                abs(p.offset[1]),
                abs(p.offset[0] + p.values.shape[0]),
                abs(p.offset[1] + p.values.shape[1]),
            )
            for p in patches
        )
        self.reach = int(extent + self.radius + math.ceil(self.pitch) + 2)
