"""The fixed filter bank of the Pathfinder input layer: Gabors plus one centre-surround filter.

The paper says "24 Gabors (12 orientations x 2 phases) and one difference-of-Gaussians"; the
authors' ``gabor_serre.npy`` holds the 24 Gabors and a uniform positive disk instead of a DoG.
Both are generated here (no file), switchable with ``center="dog" | "disk"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CENTER_FILTERS = ("dog", "disk")


def _grid(size: int) -> tuple[Tensor, Tensor]:
    half = (size - 1) / 2.0
    coords = torch.arange(size, dtype=torch.float64) - half
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return rows, cols


def _normalise(kernel: Tensor, aperture: Tensor) -> Tensor:
    """Zero mean inside the aperture, zero outside, unit L2 norm."""
    kernel = kernel * aperture
    kernel = kernel - aperture * kernel.sum() / aperture.sum()
    norm = kernel.norm()
    return kernel / norm if norm > 0 else kernel


def gabor_filter(
    size: int, theta: float, phase: str, wavelength: float = 3.5, sigma: float = 2.8
) -> Tensor:
    """One (size, size) Gabor in a disk aperture, zero-mean, unit L2 norm.

    ``theta`` is the orientation of the carrier's wave vector in radians; ``phase`` is ``"even"``
    (cosine) or ``"odd"`` (sine).
    """
    if phase not in ("even", "odd"):
        raise ValueError(f"Gabor phase must be 'even' or 'odd', got {phase!r}")
    rows, cols = _grid(size)
    radius = (size - 1) / 2.0
    aperture = ((rows**2 + cols**2) <= radius**2 + 1e-9).double()
    along = cols * math.cos(theta) + rows * math.sin(theta)
    envelope = torch.exp(-(rows**2 + cols**2) / (2 * sigma**2))
    carrier = torch.cos if phase == "even" else torch.sin
    return _normalise(envelope * carrier(2 * math.pi * along / wavelength), aperture).float()


def center_filter(
    size: int, kind: str = "dog", sigma_center: float = 1.0, sigma_surround: float = 2.0
) -> Tensor:
    """The 25th filter: a difference of Gaussians (paper) or the authors' uniform disk.

    The DoG is zero-mean with unit L2 norm inside the disk aperture; the disk is the authors'
    uniform positive disk whose entries sum to size**2 (radius (size-1)/2).
    """
    if kind not in CENTER_FILTERS:
        raise ValueError(f"unknown centre filter {kind!r}; choose one of {CENTER_FILTERS}")
    rows, cols = _grid(size)
    radius = (size - 1) / 2.0
    r2 = rows**2 + cols**2
    aperture = (r2 <= radius**2 + 1e-9).double()
    if kind == "disk":
        return (aperture * float(size**2) / aperture.sum()).float()
    center = torch.exp(-r2 / (2 * sigma_center**2)) / (2 * math.pi * sigma_center**2)
    surround = torch.exp(-r2 / (2 * sigma_surround**2)) / (2 * math.pi * sigma_surround**2)
    return _normalise(center - surround, aperture).float()


def gabor_bank(channels: int = 25, size: int = 7, center: str = "dog") -> Tensor:
    """(channels, 1, size, size) input filters: 2 x n orientations of Gabors + centre filter(s).

    With ``channels = 25`` this is the paper's bank: filters 0..11 even-phase and 12..23 odd-phase
    Gabors at 12 orientations in 15-degree steps, filter 24 the centre filter. Other channel
    counts use n = (channels - 1) // 2 orientations (180/n degrees apart); an even count adds the
    sign-inverted centre filter as the last channel.
    """
    if channels < 1:
        raise ValueError(f"the filter bank needs channels >= 1, got {channels}")
    if size < 3 or size % 2 == 0:
        raise ValueError(f"the filter bank needs an odd size >= 3, got {size}")
    orientations = (channels - 1) // 2
    filters = []
    for phase in ("even", "odd"):
        for k in range(orientations):
            filters.append(gabor_filter(size, math.pi * k / orientations, phase))
    filters.append(center_filter(size, center))
    if len(filters) < channels:
        filters.append(-center_filter(size, center))
    return torch.stack(filters[:channels]).unsqueeze(1)
