"""Statistics for validating the generator against the analytic law and the reference figures.

``path_statistics`` measures what ``docs/pathfinder_generator.md`` section "Validation" reports:
turn-angle moments, pitch, end-to-end distance, pair restarts, placed distractors, ink / label
coverage, contacts between the label and other ink. ``turn_pit_values`` turns every observed turn
into a randomised probability-integral-transform value under the exact discrete turn law
``p(delta) ~ cos^2(min(c |delta|, pi/2))`` over the candidate directions; on an unobstructed
canvas these values are Uniform(0, 1) exactly, which gives a sharp goodness-of-fit test.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple

import cv2
import numpy as np

from .generator import ContourMeta, PathfinderGenerator, PathfinderParams

_WRAP = 2 * math.pi


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to (-pi, pi]."""
    wrapped = (np.asarray(angle) + math.pi) % _WRAP - math.pi
    return np.where(np.isclose(wrapped, -math.pi), math.pi, wrapped)


def turn_law_moments(continuity: float) -> Tuple[float, float]:
    """(E|delta|, sd(delta)) in degrees of the continuous law (14.9, 18.1 for c = 1.8)."""
    cap = math.pi / (2 * continuity)
    x = np.linspace(-cap, cap, 200_001)
    density = np.cos(continuity * x) ** 2
    density /= density.sum()
    return (
        math.degrees(float((density * np.abs(x)).sum())),
        math.degrees(math.sqrt(float((density * x * x).sum()))),
    )


def turn_pit_values(
    contours: Iterable[ContourMeta],
    candidate_directions: np.ndarray,
    continuity: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Randomised PIT values (float64) of every turn under the discrete law given the previous
    dash direction (candidates: the generator's ``bank.directions``). Uniform(0, 1) when the
    turns follow the law."""
    values: List[float] = []
    for contour in contours:
        directions = contour.directions
        for k in range(1, len(directions)):
            deltas = wrap_angle(candidate_directions - directions[k - 1])
            weights = np.cos(np.minimum(continuity * np.abs(deltas), math.pi / 2)) ** 2
            observed = float(wrap_angle(directions[k] - directions[k - 1]))
            same = np.isclose(deltas, observed, atol=1e-9)
            if not same.any():
                raise ValueError(f"turn {math.degrees(observed):.3f} deg is not a candidate turn")
            total = weights.sum()
            below = weights[deltas < observed - 1e-9].sum() / total
            mass = weights[same].sum() / total
            values.append(below + rng.random() * mass)
    return np.asarray(values, dtype=np.float64)


def ks_uniform(values: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of ``values`` from Uniform(0, 1)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("ks_uniform needs at least one value")
    upper = np.arange(1, n + 1) / n - x
    lower = x - np.arange(n) / n
    return float(max(upper.max(), lower.max()))


def label_contact(label: np.ndarray, other_ink: np.ndarray, distance: int = 1) -> bool:
    """True when ink of other contours (>= 0.5) lies within ``distance`` px (Chebyshev) of the
    label. label, other_ink: (H, W) uint8."""
    grown = cv2.dilate((label > 127).astype(np.uint8), np.ones((2 * distance + 1,) * 2, np.uint8))
    return bool(((grown > 0) & (other_ink >= 128)).any())


def path_statistics(
    params: PathfinderParams, seed: int = 0, num: int = 200, start: int = 0
) -> Dict[str, float]:
    """Summary statistics of samples ``start..start+num-1`` (canvas resolution unless noted)."""
    generator = PathfinderGenerator(params)
    turns, target_turns, pitches, e2e = [], [], [], []
    restarts, placed, label_frac, ink_frac, contacts, twin_overlap, components_ok = (
        [] for _ in range(7)
    )
    marker_border = []
    for index in range(start, start + num):
        sample = generator.sample(seed, index)
        meta = sample.meta
        for contour in meta.contours:
            turns.extend(contour.turns.tolist())
            if len(contour.pivots) > 1:
                pitches.extend(np.linalg.norm(np.diff(contour.pivots, axis=0), axis=1).tolist())
        for contour in meta.contours[:2]:
            target_turns.extend(contour.turns.tolist())
            e2e.append(float(np.linalg.norm(contour.heads[-1] - contour.tails[0])))
        restarts.append(meta.pair_restarts)
        placed.append(meta.distractors_placed)
        label_frac.append(float((sample.label > 0).mean()))
        ink_frac.append(float((sample.image >= 128).mean()))
        others = generator.render_contours(meta.contours[1:])
        contacts.append(label_contact(sample.label, others))
        twin = generator.render_contours([meta.twin])
        twin_overlap.append(bool(((twin >= 128) & (sample.label > 0)).any()))
        count = cv2.connectedComponents((sample.label > 0).astype(np.uint8), connectivity=8)[0] - 1
        components_ok.append(count == params.contour_length)
        r, c = meta.marker_center
        marker_border.append(min(r, c, params.canvas_size - 1 - r, params.canvas_size - 1 - c))
    turns_deg = np.degrees(np.asarray(turns)) if turns else np.zeros(1)
    pair_deg = np.degrees(np.asarray(target_turns)) if target_turns else np.zeros(1)
    law_mean, law_sd = turn_law_moments(params.continuity)
    return {
        "num": num,
        "turn_mean_abs_deg": float(np.abs(turns_deg).mean()),
        "turn_sd_deg": float(turns_deg.std()),
        "turn_mean_deg": float(turns_deg.mean()),
        "turn_max_abs_deg": float(np.abs(turns_deg).max()),
        "pair_turn_mean_abs_deg": float(np.abs(pair_deg).mean()),
        "pair_turn_sd_deg": float(pair_deg.std()),
        "law_mean_abs_deg": law_mean,
        "law_sd_deg": law_sd,
        "pitch_mean": float(np.mean(pitches)) if pitches else float("nan"),
        "pitch_min": float(np.min(pitches)) if pitches else float("nan"),
        "pitch_max": float(np.max(pitches)) if pitches else float("nan"),
        "end_to_end_p5": float(np.percentile(e2e, 5)),
        "end_to_end_p50": float(np.percentile(e2e, 50)),
        "end_to_end_p95": float(np.percentile(e2e, 95)),
        "pair_restarts_mean": float(np.mean(restarts)),
        "distractors_placed_mean": float(np.mean(placed)),
        "label_percent": 100 * float(np.mean(label_frac)),
        "ink_percent": 100 * float(np.mean(ink_frac)),
        "contact_rate": float(np.mean(contacts)),
        "twin_overlap_rate": float(np.mean(twin_overlap)),
        "label_components_ok_rate": float(np.mean(components_ok)),
        "marker_border_min": float(np.min(marker_border)),
    }


def pixel_invariant_violations(
    image: np.ndarray,
    label: np.ndarray,
    contour_length: int,
    padding: int = 22,
    marker_radius: float = 5.0,
) -> List[str]:
    """The generator's invariants that the pixels alone of one canvas-resolution sample show
    (image, label (H, W) uint8). Returns the violated ones (empty list: all hold)."""
    problems = []
    if image.dtype != np.uint8 or label.dtype != np.uint8 or image.shape != label.shape:
        return [f"bad arrays {image.dtype}{image.shape} / {label.dtype}{label.shape}"]
    if not set(np.unique(label).tolist()) <= {0, 255}:
        problems.append("label is not binary 0/255")
    if not (image[label > 0] >= 128).all():
        problems.append("label pixel outside the ink (image < 0.5)")
    count = cv2.connectedComponents((label > 0).astype(np.uint8), connectivity=8)[0] - 1
    if count != contour_length:
        problems.append(f"label has {count} 8-connected components, expected {contour_length}")
    if padding:
        frame = np.ones(image.shape, dtype=bool)
        frame[padding:-padding, padding:-padding] = False
        if image[frame].any():
            problems.append(f"ink within {padding} px of the border")
    opening_radius = max(1, int(math.floor(marker_radius * 0.6)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * opening_radius + 1,) * 2)
    opened = cv2.morphologyEx((image >= 128).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    blobs, _, blob_stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if blobs - 1 != 1:
        problems.append(f"{blobs - 1} disk-shaped blobs, expected 1")
    else:
        radius = math.sqrt(blob_stats[1, cv2.CC_STAT_AREA] / math.pi)
        if abs(radius - marker_radius) > 0.5:
            problems.append(f"marker radius {radius:.2f}, expected {marker_radius} +- 0.5")
        if not (opened.astype(bool) <= (label > 0)).all():
            problems.append("the marker disk is not in the label")
    return problems
