"""Pathfinder segmentation generator (the C-RBP PF-9/14/20/25 images), seeded and fast.

The process is the original ``snakes2`` segmentation mode (see ``docs/pathfinder_generator.md``):

1. A frame of ``padding`` px is marked occupied. Two contours A and B of ``contour_length`` dashes
   are grown in lock-step from origins ``seed_distance`` px apart; any dead end or collision in
   either throws the pair away and the pair restarts from scratch (exact rejection sampling of
   the joint process, as in the original).
2. Each extension samples one of the candidate heads on the circle of radius ``L + m`` around the
   current pivot with weight ``(1 - D) * cos^2(min(continuity * |turn|, pi / 2))``, where ``D`` is
   the occupancy dilated by a disk of radius ``m``; a candidate whose footprint overlaps committed
   footprints (``M + F >= 1.8``) is redrawn (3 draws in all).
3. ``num_distractors`` contours of ``contour_length // 3`` dashes are added (5 tries each).
4. One of A/B (probability 1/2) is the target: a disk of ``marker_radius`` marks its origin tip.
   Label = target contour + disk, binarised at 0.5.

Speed comes from the representation, not from the distribution: every dash shape is one of a few
hundred precomputed patches (``geometry.ShapeBank``), the occupancy ``M`` and its dilation ``D``
are updated incrementally on small windows (an undo log rolls back failed contours), candidate
weights are a 49-element gather, and a seed origin is found by uniform probing with an exact
full-canvas fallback. There is no full-canvas work per dash.

By default the three bugs of the original are fixed, so contours never touch: the lock-step twin
is tested against the other contour's newest dash, both last dashes are committed, and the marker
is part of the occupancy. ``legacy_quirks=True`` reproduces the original behaviour.

Sample ``i`` of seed ``s`` uses ``numpy.random.Generator(PCG64(SeedSequence([s, i])))``, so it is
the same bytes in any process, worker count or shard layout.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .geometry import Patch, Shape, ShapeBank

PRESET_LENGTHS: Tuple[int, ...] = (6, 9, 14, 20, 25)
DISTRACTOR_RULES: Tuple[str, ...] = ("committed", "ratio")


class GenerationError(RuntimeError):
    """The parameters do not allow a sample (e.g. a contour that cannot fit on the canvas)."""


@dataclass(frozen=True)
class PathfinderParams:
    """All generator settings (defaults: C-RBP segmentation PF-14 at 300 px).

    Lengths are in pixels of the ``canvas_size`` image. ``distractor_length=None`` means
    ``contour_length // 3``; ``first_seed_border=None`` means ``2 * seed_distance``.
    """

    contour_length: int = 14
    canvas_size: int = 300
    padding: int = 22
    paddle_length: int = 5
    paddle_thickness: float = 2.0
    paddle_margin: int = 3
    continuity: float = 1.8
    marker_radius: float = 5.0
    seed_distance: float = 27.0
    antialias_scale: int = 2
    num_distractors: int = 15
    distractor_length: Optional[int] = None
    first_seed_border: Optional[int] = None
    legacy_quirks: bool = False
    max_seed_tries: int = 3
    max_extension_draws: int = 3
    max_distractor_tries: int = 5
    max_pair_restarts: int = 2000
    collision_threshold: float = 1.8
    free_threshold: float = 0.3
    dead_end_threshold: float = 1e-4
    min_free_fraction: float = 0.01

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        for name in (
            "contour_length",
            "canvas_size",
            "paddle_length",
            "antialias_scale",
            "max_seed_tries",
            "max_extension_draws",
            "max_distractor_tries",
        ):
            value = getattr(self, name)
            need(
                isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                f"{name} must be an integer, got {value!r}",
            )
            need(value >= 1, f"{name} must be >= 1, got {value}")
        for name in ("padding", "paddle_margin", "num_distractors", "max_pair_restarts"):
            value = getattr(self, name)
            need(
                isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                f"{name} must be an integer, got {value!r}",
            )
            need(value >= 0, f"{name} must be >= 0, got {value}")
        for name in ("paddle_thickness", "continuity"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("marker_radius", "seed_distance", "dead_end_threshold", "min_free_fraction"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(
            self.distractor_length is None or self.distractor_length >= 0,
            f"distractor_length must be >= 0 or None, got {self.distractor_length}",
        )
        need(
            self.first_seed_border is None or self.first_seed_border >= 0,
            f"first_seed_border must be >= 0 or None, got {self.first_seed_border}",
        )
        need(
            0 < self.free_threshold < 1,
            f"free_threshold must be in (0, 1), got {self.free_threshold}",
        )
        need(
            1 < self.collision_threshold <= 2,
            f"collision_threshold must be in (1, 2], got {self.collision_threshold}",
        )
        need(
            self.canvas_size > 2 * self.padding,
            f"padding {self.padding} leaves no drawable area on a {self.canvas_size}-px canvas",
        )
        border = self.origin_border
        need(
            self.canvas_size - 2 * border >= 1,
            f"canvas_size {self.canvas_size} leaves no room for the first origin, which must be "
            f"first_seed_border={border} px from every border (default 2 * seed_distance)",
        )

    @property
    def distractor_contour_length(self) -> int:
        """Dashes per distractor (``contour_length // 3`` unless overridden)."""
        if self.distractor_length is None:
            return self.contour_length // 3
        return int(self.distractor_length)

    @property
    def origin_border(self) -> int:
        """Minimum distance (px) of the first contour's origin from every border."""
        if self.first_seed_border is None:
            return int(math.ceil(2 * self.seed_distance))
        return int(self.first_seed_border)

    def replace(self, **overrides) -> "PathfinderParams":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **overrides)


def preset(
    contour_length: int = 14, distractor_rule: str = "committed", **overrides
) -> PathfinderParams:
    """C-RBP segmentation settings for ``contour_length`` (6, 9, 14, 20 or 25; any value >= 1
    works). ``distractor_rule="committed"`` uses 15 distractor contours (what the committed
    original code does); ``"ratio"`` uses ``30 // (contour_length // 3)``. Any field of
    ``PathfinderParams`` can be overridden by keyword."""
    if distractor_rule not in DISTRACTOR_RULES:
        raise ValueError(
            f"distractor_rule must be one of {DISTRACTOR_RULES}, got {distractor_rule!r}"
        )
    if not isinstance(contour_length, (int, np.integer)) or contour_length < 1:
        raise ValueError(f"contour_length must be an integer >= 1, got {contour_length!r}")
    fields = {f.name for f in dataclasses.fields(PathfinderParams)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown Pathfinder parameter(s): {', '.join(unknown)}")
    settings: Dict[str, object] = {"contour_length": int(contour_length)}
    if distractor_rule == "ratio":
        length = overrides.get("distractor_length") or int(contour_length) // 3
        settings["num_distractors"] = 30 // length if length else 0
    settings.update(overrides)
    return PathfinderParams(**settings)


@dataclass
class ContourMeta:
    """One contour, in canvas pixel coordinates (row, col).

    tails, heads: (n, 2) int, the two ends of each dash's ink (a dash points tail -> head; the
        origin tip of the contour is ``tails[0]``).
    pivots: (n, 2) int, the pivot each dash was sampled around (``pivots[0]`` lies behind the
        origin tip; consecutive pivots are ``L + 2m`` px apart).
    directions: (n,) float, dash directions in radians (atan2(drow, dcol)).
    role: "target", "twin" or "distractor".
    """

    role: str
    tails: np.ndarray
    heads: np.ndarray
    pivots: np.ndarray
    directions: np.ndarray

    @property
    def turns(self) -> np.ndarray:
        """(n - 1,) signed turn angles between consecutive dashes, radians in (-pi, pi]."""
        delta = np.diff(self.directions)
        return (delta + np.pi) % (2 * np.pi) - np.pi

    @property
    def length(self) -> int:
        return int(len(self.directions))


@dataclass
class SampleMeta:
    """Geometry of one sample (canvas coordinates) and generation counters."""

    contours: List[ContourMeta]  # target, twin, then the placed distractors
    marker_center: Tuple[int, int]
    pair_restarts: int
    distractors_placed: int
    distractors_requested: int

    @property
    def target(self) -> ContourMeta:
        return self.contours[0]

    @property
    def twin(self) -> ContourMeta:
        return self.contours[1]

    @property
    def distractors(self) -> List[ContourMeta]:
        return self.contours[2:]


@dataclass
class PathfinderSample:
    """image: (H, W) uint8, 0 background, 255 full ink. label: (H, W) uint8 in {0, 255}."""

    image: np.ndarray
    label: np.ndarray
    meta: SampleMeta
    fields: Optional[Dict[str, np.ndarray]] = field(default=None, repr=False)


def sample_rng(seed: int, index: int, *extra: int) -> np.random.Generator:
    """The RNG of sample ``index`` of ``seed`` (``extra`` words select independent streams)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([int(seed), int(index), *extra]))
    )


class _Uniforms:
    """Buffered U[0, 1) draws as Python floats (a numpy call per draw would dominate)."""

    __slots__ = ("rng", "buffer", "position")

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.buffer: List[float] = []
        self.position = 0

    def __call__(self) -> float:
        if self.position >= len(self.buffer):
            self.buffer = self.rng.random(256).tolist()
            self.position = 0
        value = self.buffer[self.position]
        self.position += 1
        return value


class _Snake:
    """A growing contour: the pivot, the previous direction (row of the turn table), the pending
    footprints (newest dash, not yet in the occupancy) and the drawn dashes."""

    __slots__ = ("pivot_r", "pivot_c", "prev", "pending", "dashes", "pivots", "tail")

    def __init__(self, tail: Tuple[int, int]) -> None:
        self.tail = tail
        self.pivot_r = 0
        self.pivot_c = 0
        self.prev = 0
        self.pending: List[Tuple[Shape, int, int]] = []
        self.dashes: List[Tuple[int, int, int]] = []  # (shape id, anchor row, anchor col)
        self.pivots: List[Tuple[int, int]] = []


class _Stop(Exception):
    """No free origin is left for distractors (under ``min_free_fraction`` of the canvas)."""


_SINGLE_PROBES = 3  # cheap one-by-one origin probes, then a vectorised batch
_PROBES = 64
_max_reduce = (
    np.maximum.reduce
)  # uniform origin probes before the exact full-canvas free map is computed


class PathfinderGenerator:
    """Generates samples for one ``PathfinderParams``; ``sample(seed, index)`` is deterministic.

    Reusable and cheap to call; building it precomputes the patch tables (~0.1 s). Not
    thread-safe (it keeps per-sample scratch state): use one per thread or process."""

    def __init__(self, params: Optional[PathfinderParams] = None) -> None:
        self.params = params if params is not None else PathfinderParams()
        p = self.params
        self.bank = _shape_bank(
            p.paddle_length,
            float(p.paddle_thickness),
            p.paddle_margin,
            float(p.continuity),
            float(p.marker_radius),
            p.antialias_scale,
        )
        bank = self.bank
        self.pad = bank.reach + 2
        self.size = p.canvas_size
        self.width = p.canvas_size + 2 * self.pad
        pad, size = self.pad, self.size
        occupancy = np.ones((self.width, self.width), dtype=np.float32)
        occupancy[
            pad + p.padding : pad + size - p.padding, pad + p.padding : pad + size - p.padding
        ] = 0
        self._template_m = occupancy
        self._template_d = self._dilate_full(occupancy)
        self.num_dirs = bank.num_directions
        self._head_flat = (bank.head_offsets[:, 0] * self.width + bank.head_offsets[:, 1]).astype(
            np.int64
        )
        self._head_r = bank.head_offsets[:, 0].copy()
        self._head_c = bank.head_offsets[:, 1].copy()
        self._ring = int(np.abs(bank.head_offsets).max())
        self._next = [tuple(v) for v in bank.next_pivot.tolist()]
        self._seed_kernel_flat = [
            (s.seed_kernel[:, 0] * self.width + s.seed_kernel[:, 1]).astype(np.int64)
            for s in bank.seed
        ]
        self._turn = bank.turn_weights
        self._seed_free_kernels: Dict[int, Tuple[np.ndarray, Tuple[int, int]]] = {}

    # ------------------------------------------------------------------ occupancy fields
    def _dilate_full(self, occupancy: np.ndarray) -> np.ndarray:
        from .geometry import disk_kernel

        if self.params.paddle_margin <= 0:
            return occupancy.copy()
        return cv2.dilate(occupancy, disk_kernel(self.params.paddle_margin))

    def _commit(self, shape: Shape, row: int, col: int) -> None:
        log = self._log
        patch = shape.foot
        r0, c0 = row + patch.dr, col + patch.dc
        region = self._m[r0 : r0 + patch.h, c0 : c0 + patch.w]
        log.append((region, region.copy()))
        np.maximum(region, patch.values, out=region)
        patch = shape.foot_dilated
        r0, c0 = row + patch.dr, col + patch.dc
        region = self._d[r0 : r0 + patch.h, c0 : c0 + patch.w]
        log.append((region, region.copy()))
        np.maximum(region, patch.values, out=region)

    def _rollback(self, checkpoint: int) -> None:
        log = self._log
        while len(log) > checkpoint:
            region, old = log.pop()
            region[...] = old

    # ------------------------------------------------------------------ seeds
    def _free_at(self, flat: int, kernel_flat: np.ndarray) -> bool:
        return float(self._m_flat[flat + kernel_flat].max()) <= self.params.free_threshold

    def _find_origin(self, degree_index: int, border: int) -> Tuple[int, int]:
        """A tail uniform among free pixels at least ``border`` px from every canvas edge
        (canvas coordinates); raises ``_Stop`` when under ``min_free_fraction`` is free."""
        p, pad, width = self.params, self.pad, self.width
        lo, hi = border, self.size - border
        span = hi - lo
        kernel_flat = self._seed_kernel_flat[degree_index]
        # First success of i.i.d. uniform probes = uniform over the free pixels (exact).
        m_flat, threshold, u = self._m_flat, p.free_threshold, self._u
        for _ in range(_SINGLE_PROBES):
            row, col = lo + int(u() * span), lo + int(u() * span)
            if _max_reduce(m_flat[(row + pad) * width + col + pad + kernel_flat]) <= threshold:
                return row, col
        probes = lo + (self._rng.random((_PROBES, 2)) * span).astype(np.int64)
        flat = (probes[:, 0] + pad) * width + probes[:, 1] + pad
        ok = self._m_flat[flat[:, None] + kernel_flat[None, :]].max(axis=1) <= p.free_threshold
        if ok.any():
            first = int(ok.argmax())
            return int(probes[first, 0]), int(probes[first, 1])
        # Exact fallback: the free map of this direction on the whole canvas.
        kernel, anchor = self._free_kernel(degree_index)
        dilated = cv2.dilate(self._m, kernel, anchor=anchor)
        free = dilated[pad + lo : pad + hi, pad + lo : pad + hi] <= p.free_threshold
        count = int(free.sum())
        if count == 0 or count < p.min_free_fraction * self.size * self.size:
            raise _Stop
        pick = int(np.flatnonzero(free.ravel())[int(self._u() * count)])
        return lo + pick // span, lo + pick % span

    def _free_kernel(self, degree_index: int) -> Tuple[np.ndarray, Tuple[int, int]]:
        cached = self._seed_free_kernels.get(degree_index)
        if cached is None:
            offsets = self.bank.seed[degree_index].seed_kernel
            lo = offsets.min(axis=0)
            kernel = np.zeros(tuple(offsets.max(axis=0) - lo + 1), dtype=np.uint8)
            kernel[offsets[:, 0] - lo[0], offsets[:, 1] - lo[1]] = 1
            cached = (kernel, (int(-lo[1]), int(-lo[0])))  # cv2 anchor is (x, y)
            self._seed_free_kernels[degree_index] = cached
        return cached

    def _start_snake(self, tail: Tuple[int, int], degree_index: int) -> _Snake:
        bank, pad = self.bank, self.pad
        snake = _Snake(tail)
        tr, tc = tail[0] + pad, tail[1] + pad
        shape = bank.seed[degree_index]
        snake.pending = [(shape, tr, tc)]
        snake.dashes.append((self.num_dirs + degree_index, tr, tc))
        pivot_r = tr + int(bank.seed_pivot[degree_index, 0])
        pivot_c = tc + int(bank.seed_pivot[degree_index, 1])
        snake.pivots.append((pivot_r, pivot_c))
        snake.pivot_r = tr + int(bank.seed_next_pivot[degree_index, 0])
        snake.pivot_c = tc + int(bank.seed_next_pivot[degree_index, 1])
        snake.prev = self.num_dirs + degree_index
        return snake

    def _marker_fits(self, tail: Tuple[int, int]) -> bool:
        patch = self.bank.marker.ink
        lo = self.params.padding
        hi = self.size - self.params.padding
        r0, c0 = tail[0] + patch.offset[0], tail[1] + patch.offset[1]
        h, w = patch.values.shape
        return r0 >= lo and c0 >= lo and r0 + h <= hi and c0 + w <= hi

    # ------------------------------------------------------------------ growth
    def _extend(self, snake: _Snake, other: Optional[_Snake]) -> bool:
        """Add one dash to ``snake``; ``other`` (fixed mode, lock-step) contributes its pending
        footprints to the tests. Returns False on a dead end or repeated collisions."""
        p = self.params
        pr, pc = snake.pivot_r, snake.pivot_c
        dvals = self._d_flat[pr * self.width + pc + self._head_flat]
        others = other.pending if other is not None else ()
        if others:
            dvals = self._overlay_dilated(dvals, pr, pc, others)
        cumulative = ((1.0 - dvals) * self._turn[snake.prev]).cumsum()
        total = float(cumulative[-1])
        if total < p.dead_end_threshold:
            return False
        ext = self.bank.extension
        m = self._m
        threshold = p.collision_threshold
        last = self.num_dirs - 1
        for _ in range(p.max_extension_draws):
            j = int(cumulative.searchsorted(self._u() * total, side="right"))
            if j > last:
                j = last
            shape = ext[j]
            foot = shape.foot
            r0, c0 = pr + foot.dr, pc + foot.dc
            if _max_reduce(m[r0 : r0 + foot.h, c0 : c0 + foot.w] + foot.values, None) >= threshold:
                continue
            if others and self._collides_pending(foot, r0, c0, others, threshold):
                continue
            for item in snake.pending:
                self._commit(*item)
            snake.pending = [(shape, pr, pc)]
            snake.dashes.append((j, pr, pc))
            snake.pivots.append((pr, pc))
            nr, nc = self._next[j]
            snake.pivot_r, snake.pivot_c = pr + nr, pc + nc
            snake.prev = j
            return True
        return False

    def _overlay_dilated(
        self, dvals: np.ndarray, pr: int, pc: int, pending: Sequence[Tuple[Shape, int, int]]
    ) -> np.ndarray:
        ring = self._ring
        for shape, ar, ac in pending:
            patch = shape.foot_dilated
            r0, c0 = ar + patch.offset[0], ac + patch.offset[1]
            h, w = patch.values.shape
            if pr + ring < r0 or pr - ring >= r0 + h or pc + ring < c0 or pc - ring >= c0 + w:
                continue
            rr = pr - r0 + self._head_r
            cc = pc - c0 + self._head_c
            inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            if inside.any():
                dvals = dvals.copy()
                dvals[inside] = np.maximum(dvals[inside], patch.values[rr[inside], cc[inside]])
        return dvals

    @staticmethod
    def _collides_pending(
        foot: Patch, r0: int, c0: int, pending: Sequence[Tuple[Shape, int, int]], threshold: float
    ) -> bool:
        h, w = foot.values.shape
        for shape, ar, ac in pending:
            other = shape.foot
            q0, d0 = ar + other.offset[0], ac + other.offset[1]
            qh, qw = other.values.shape
            top, bottom = max(r0, q0), min(r0 + h, q0 + qh)
            left, right = max(c0, d0), min(c0 + w, d0 + qw)
            if top >= bottom or left >= right:
                continue
            overlap = (
                foot.values[top - r0 : bottom - r0, left - c0 : right - c0]
                + other.values[top - q0 : bottom - q0, left - d0 : right - d0]
            )
            if float(overlap.max()) >= threshold:
                return True
        return False

    def _grow_pair(self, target_is_a: bool) -> Tuple[_Snake, _Snake, int]:
        p = self.params
        legacy = p.legacy_quirks
        for attempt in range(p.max_pair_restarts + 1):
            checkpoint = len(self._log)
            degree_a = int(self._u() * 360)
            try:
                tail_a = self._find_origin(degree_a, p.origin_border)
            except _Stop:
                raise GenerationError(
                    f"no free origin for the first contour: the region {p.origin_border} px from "
                    f"the borders of the {p.canvas_size}-px canvas is (almost) all frame"
                ) from None
            snake_a = self._start_snake(tail_a, degree_a)
            snake_b = None
            for _ in range(p.max_seed_tries):
                psi = math.radians(int(self._u() * 360) - 180)
                tail_b = (
                    int(math.floor(tail_a[0] + p.seed_distance * math.sin(psi) + 0.5)),
                    int(math.floor(tail_a[1] + p.seed_distance * math.cos(psi) + 0.5)),
                )
                degree_b = int(self._u() * 360)
                if not (0 <= tail_b[0] < self.size and 0 <= tail_b[1] < self.size):
                    continue
                flat = (tail_b[0] + self.pad) * self.width + tail_b[1] + self.pad
                if not self._free_at(flat, self._seed_kernel_flat[degree_b]):
                    continue
                if not target_is_a and not self._marker_fits(tail_b):
                    continue
                snake_b = self._start_snake(tail_b, degree_b)
                break
            if snake_b is not None:
                if not legacy:
                    target = snake_a if target_is_a else snake_b
                    target.pending.append(
                        (self.bank.marker, target.tail[0] + self.pad, target.tail[1] + self.pad)
                    )
                ok = True
                for _ in range(1, p.contour_length):
                    if not self._extend(snake_a, None if legacy else snake_b):
                        ok = False
                        break
                    if not self._extend(snake_b, None if legacy else snake_a):
                        ok = False
                        break
                if ok:
                    # Legacy quirk 2: only B's newest footprint was committed.
                    finishing = (snake_b,) if legacy else (snake_a, snake_b)
                    for snake in finishing:
                        for item in snake.pending:
                            self._commit(*item)
                    self._log.clear()
                    return snake_a, snake_b, attempt
            self._rollback(checkpoint)
        raise GenerationError(
            f"could not place the two contours of contour_length={p.contour_length} after "
            f"{p.max_pair_restarts} restarts (canvas_size={p.canvas_size}, padding={p.padding}, "
            f"continuity={p.continuity}); the contour does not fit: use a shorter contour_length, "
            f"a larger canvas or a larger max_pair_restarts"
        )

    def _grow_distractors(self) -> List[_Snake]:
        p = self.params
        length = p.distractor_contour_length
        placed: List[_Snake] = []
        if length <= 0:
            return placed
        for _ in range(p.num_distractors):
            for _try in range(p.max_distractor_tries):
                checkpoint = len(self._log)
                degree = int(self._u() * 360)
                try:
                    tail = self._find_origin(degree, p.padding)
                except _Stop:
                    return placed
                snake = self._start_snake(tail, degree)
                if all(self._extend(snake, None) for _ in range(1, length)):
                    for item in snake.pending:
                        self._commit(*item)
                    self._log.clear()
                    placed.append(snake)
                    break
                self._rollback(checkpoint)
        return placed

    # ------------------------------------------------------------------ public
    def sample(self, seed: int, index: int, return_fields: bool = False) -> PathfinderSample:
        """Sample ``index`` of ``seed``: image/label (H, W) uint8 and its geometry.

        ``return_fields=True`` also returns the final occupancy ``M`` and dilated occupancy ``D``
        (float32, canvas coordinates) for testing."""
        p = self.params
        self._rng = sample_rng(seed, index)
        self._u = _Uniforms(self._rng)
        self._m = self._template_m.copy()
        self._d = self._template_d.copy()
        self._m_flat = self._m.reshape(-1)
        self._d_flat = self._d.reshape(-1)
        self._log: List[Tuple[np.ndarray, np.ndarray]] = []
        try:
            target_is_a = self._u() < 0.5
            snake_a, snake_b, restarts = self._grow_pair(target_is_a)
            distractors = self._grow_distractors()
            target, twin = (snake_a, snake_b) if target_is_a else (snake_b, snake_a)
            image, label = self._render(target, [twin] + distractors)
            meta = SampleMeta(
                contours=[self._contour_meta(target, "target"), self._contour_meta(twin, "twin")]
                + [self._contour_meta(s, "distractor") for s in distractors],
                marker_center=(int(target.tail[0]), int(target.tail[1])),
                pair_restarts=restarts,
                distractors_placed=len(distractors),
                distractors_requested=p.num_distractors if p.distractor_contour_length > 0 else 0,
            )
            fields = None
            if return_fields:
                inner = (slice(self.pad, self.pad + self.size),) * 2
                fields = {"M": self._m[inner].copy(), "D": self._d[inner].copy()}
            return PathfinderSample(image=image, label=label, meta=meta, fields=fields)
        finally:
            self._m = self._d = self._m_flat = self._d_flat = None  # type: ignore[assignment]
            self._log = []

    __call__ = sample

    def _shape(self, shape_id: int) -> Shape:
        if shape_id < self.num_dirs:
            return self.bank.extension[shape_id]
        return self.bank.seed[shape_id - self.num_dirs]

    def _paint(self, canvas: np.ndarray, dashes: Sequence[Tuple[int, int, int]]) -> None:
        for shape_id, row, col in dashes:
            patch = self._shape(shape_id).ink
            r0, c0 = row + patch.offset[0], col + patch.offset[1]
            h, w = patch.values.shape
            region = canvas[r0 : r0 + h, c0 : c0 + w]
            np.maximum(region, patch.values, out=region)

    def _render(self, target: _Snake, others: Sequence[_Snake]) -> Tuple[np.ndarray, np.ndarray]:
        canvas = np.zeros((self.width, self.width), dtype=np.uint8)
        self._paint(canvas, target.dashes)
        marker = self.bank.marker.ink
        mr = target.tail[0] + self.pad + marker.offset[0]
        mc = target.tail[1] + self.pad + marker.offset[1]
        h, w = marker.values.shape
        region = canvas[mr : mr + h, mc : mc + w]
        np.maximum(region, marker.values, out=region)
        inner = (slice(self.pad, self.pad + self.size),) * 2
        label = np.where(canvas[inner] >= 128, np.uint8(255), np.uint8(0))
        for snake in others:
            self._paint(canvas, snake.dashes)
        image = np.ascontiguousarray(canvas[inner])
        # Nothing is drawn in the frame; only the faintest Lanczos ringing (1/255) can reach it.
        pad = self.params.padding
        if pad:
            image[:pad] = 0
            image[-pad:] = 0
            image[:, :pad] = 0
            image[:, -pad:] = 0
        return image, label

    def render_contours(
        self,
        contours: Sequence[ContourMeta],
        marker: bool = False,
        marker_center: Optional[Tuple[int, int]] = None,
    ) -> np.ndarray:
        """Re-render the ink of some contours (e.g. only the distractors): (H, W) uint8."""
        canvas = np.zeros((self.width, self.width), dtype=np.uint8)
        for contour in contours:
            dashes = getattr(contour, "_dashes", None)
            if dashes is None:
                raise ValueError("render_contours needs ContourMeta objects made by this generator")
            self._paint(canvas, dashes)
        if marker:
            if marker_center is None:
                raise ValueError("marker=True needs marker_center")
            patch = self.bank.marker.ink
            r0 = marker_center[0] + self.pad + patch.offset[0]
            c0 = marker_center[1] + self.pad + patch.offset[1]
            h, w = patch.values.shape
            region = canvas[r0 : r0 + h, c0 : c0 + w]
            np.maximum(region, patch.values, out=region)
        inner = (slice(self.pad, self.pad + self.size),) * 2
        return np.ascontiguousarray(canvas[inner])

    def _contour_meta(self, snake: _Snake, role: str) -> ContourMeta:
        bank, pad, nd = self.bank, self.pad, self.num_dirs
        tails, heads, directions = [], [], []
        for shape_id, row, col in snake.dashes:
            if shape_id >= nd:
                k = shape_id - nd
                tails.append((row - pad, col - pad))
                heads.append(
                    (row - pad + int(bank.seed_head[k, 0]), col - pad + int(bank.seed_head[k, 1]))
                )
                directions.append(float(bank.seed_directions[k]))
            else:
                tails.append(
                    (
                        row - pad + int(bank.tail_offsets[shape_id, 0]),
                        col - pad + int(bank.tail_offsets[shape_id, 1]),
                    )
                )
                heads.append(
                    (
                        row - pad + int(bank.head_offsets[shape_id, 0]),
                        col - pad + int(bank.head_offsets[shape_id, 1]),
                    )
                )
                directions.append(float(bank.directions[shape_id]))
        contour = ContourMeta(
            role=role,
            tails=np.array(tails, dtype=np.int64).reshape(-1, 2),
            heads=np.array(heads, dtype=np.int64).reshape(-1, 2),
            pivots=np.array(snake.pivots, dtype=np.int64).reshape(-1, 2) - pad,
            directions=np.array(directions, dtype=np.float64),
        )
        contour._dashes = list(snake.dashes)  # type: ignore[attr-defined]
        return contour


@lru_cache(maxsize=8)
def _shape_bank(
    length: int, thickness: float, margin: int, continuity: float, marker_radius: float, aa: int
) -> ShapeBank:
    return ShapeBank(length, thickness, margin, continuity, marker_radius, aa)


@lru_cache(maxsize=8)
def get_generator(params: PathfinderParams) -> PathfinderGenerator:
    """A cached ``PathfinderGenerator`` for ``params`` (one per process)."""
    return PathfinderGenerator(params)


def generate_sample(params: PathfinderParams, seed: int, index: int) -> PathfinderSample:
    """Sample ``index`` of ``seed`` for ``params`` (uses a per-process cached generator)."""
    return get_generator(params).sample(seed, index)
