"""Torch datasets and the C-RBP training transform for Pathfinder segmentation.

* ``PathfinderTransform``: the authors' loader op: PIL bicubic resize of image and label
  (300 -> 150 by default), the same random flip for both (uniform over none / left-right /
  up-down / both, also at test time as in the released code), image / 255, label = (resized
  label / 255 > 0.2). Returns image float32 (1, S, S) in [0, 1] and label int64 (S, S).
* ``PathfinderOnTheFly``: generates sample ``i`` of ``seed`` in ``__getitem__`` (no disk).
* ``PathfinderStored``: reads a dataset written by ``generate_dataset`` (png or npy) or the
  authors' PNG data through a "path label" list.

Flips come from ``(flip_seed, index, epoch)`` (``set_epoch`` changes them), never from global RNG
state, so every DataLoader worker layout yields the same items.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from crbp_d2.contours.generator import PathfinderParams, get_generator, preset, sample_rng

from .storage import StoredPathfinder, resize_uint8

FLIP_NONE, FLIP_LR, FLIP_UD, FLIP_BOTH = 0, 1, 2, 3
_FLIP_STREAM = 1  # SeedSequence word separating flip draws from the generator's stream


def random_flip_code(flip_seed: int, index: int, epoch: int = 0) -> int:
    """Uniform flip code in {0: none, 1: left-right, 2: up-down, 3: both} for ``index``."""
    return int(sample_rng(flip_seed, index, _FLIP_STREAM, int(epoch)).integers(4))


class PathfinderTransform:
    """(image, label) uint8 (H, W) -> image float32 (1, S, S) in [0, 1], label int64 (S, S).

    size: output side (150 = the paper; e.g. 100 for small CPU runs); inputs already at ``size``
        (npy stored at that size) are not resized again.
    label_threshold: label = resized label / 255 > threshold (0.2 in the paper).
    flip: apply the flip given to ``__call__`` (False: never flip).
    resample: "bicubic" (PIL, the authors' choice), "bilinear" or "nearest".
    """

    _RESAMPLE = ("bicubic", "bilinear", "nearest")

    def __init__(
        self,
        size: int = 150,
        label_threshold: float = 0.2,
        flip: bool = True,
        resample: str = "bicubic",
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0 <= label_threshold < 1:
            raise ValueError(f"label_threshold must be in [0, 1), got {label_threshold}")
        if resample not in self._RESAMPLE:
            raise ValueError(f"resample must be one of {self._RESAMPLE}, got {resample!r}")
        self.size = int(size)
        self.label_threshold = float(label_threshold)
        self.flip = bool(flip)
        self.resample = resample

    def _resize(self, array: np.ndarray) -> np.ndarray:
        if self.resample == "bicubic":
            return resize_uint8(array, self.size)
        from PIL import Image

        mode = Image.BILINEAR if self.resample == "bilinear" else Image.NEAREST
        if array.shape == (self.size, self.size):
            return array
        return np.asarray(Image.fromarray(array).resize((self.size, self.size), mode))

    def __call__(
        self, image: np.ndarray, label: np.ndarray, flip_code: int = FLIP_NONE
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if image.dtype != np.uint8 or label.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(
                f"expected (H, W) uint8 image and label, got {image.dtype}{image.shape} "
                f"and {label.dtype}{label.shape}"
            )
        image, label = self._resize(image), self._resize(label)
        if self.flip and flip_code:
            if flip_code & FLIP_LR:
                image, label = image[:, ::-1], label[:, ::-1]
            if flip_code & FLIP_UD:
                image, label = image[::-1], label[::-1]
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0)[None]
        label_t = torch.from_numpy(
            (label.astype(np.float32) / 255.0 > self.label_threshold).astype(np.int64)
        )
        return image_t, label_t

    def __repr__(self) -> str:
        return (
            f"PathfinderTransform(size={self.size}, label_threshold={self.label_threshold}, "
            f"flip={self.flip}, resample={self.resample!r})"
        )


class _FlipMixin:
    flip_seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw other flips (same samples) for this epoch."""
        self.epoch = int(epoch)

    def _flip(self, index: int) -> int:
        return random_flip_code(self.flip_seed, index, self.epoch)


class PathfinderOnTheFly(_FlipMixin, Dataset):
    """Sample ``i`` of ``seed`` generated on demand; ``len`` = ``num``.

    params: a ``PathfinderParams`` or a contour length (``preset``). transform: default
    ``PathfinderTransform()`` (150 px); ``None``-like behaviour is ``raw=True``, which returns
    the uint8 (image, label) arrays at the canvas size instead. flip_seed: defaults to ``seed``.
    """

    def __init__(
        self,
        params: Union[PathfinderParams, int] = 14,
        num: int = 200_000,
        seed: int = 0,
        transform: Optional[PathfinderTransform] = None,
        flip_seed: Optional[int] = None,
        raw: bool = False,
    ) -> None:
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        self.params = preset(params) if isinstance(params, int) else params
        self.num = int(num)
        self.seed = int(seed)
        self.transform = transform if transform is not None else PathfinderTransform()
        self.flip_seed = self.seed if flip_seed is None else int(flip_seed)
        self.raw = raw

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int):
        if not 0 <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} samples")
        sample = get_generator(self.params).sample(self.seed, int(index))
        if self.raw:
            return sample.image, sample.label
        return self.transform(sample.image, sample.label, self._flip(int(index)))


class PathfinderStored(_FlipMixin, Dataset):
    """A written dataset (png or npy, auto-detected) or the authors' PNGs via ``list_file``.

    path: the generator's ``--out`` directory or its ``curv_contour_length_N`` folder.
    split: "train", "test" or "all". Items: ``transform(image, label, flip)``; flips depend on
    (flip_seed, global sample index, epoch).
    """

    def __init__(
        self,
        path: Union[str, Path],
        split: str = "train",
        contour_length: Optional[int] = None,
        transform: Optional[PathfinderTransform] = None,
        flip_seed: int = 0,
        list_file: Optional[Union[str, Path]] = None,
        raw: bool = False,
    ) -> None:
        self.store = StoredPathfinder(
            path, split=split, contour_length=contour_length, list_file=list_file
        )
        self.transform = transform if transform is not None else PathfinderTransform()
        self.flip_seed = int(flip_seed)
        self.raw = raw

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, position: int):
        image, label = self.store.get(int(position))
        if self.raw:
            return image, label
        return self.transform(image, label, self._flip(self.store.sample_index(int(position))))
