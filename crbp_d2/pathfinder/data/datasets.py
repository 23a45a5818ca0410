"""Torch datasets of Pathfinder segmentation and the C-RBP transform.

Items are ``(image, label)``: image float32 (1, S, S) in [0, 1], label int64 (S, S) in {0, 1}.

* :class:`PathfinderTransform`: the authors' loader op: PIL bicubic resize of image and label
  (300 -> 150 by default), image / 255, label = (resized label / 255 > 0.2), and the same flip
  for both (uniform over none / left-right / up-down / both, also at test time as in the released
  code).
* :class:`PathfinderOnTheFly`: generates sample ``i`` of ``seed`` when it is read (no disk).
* :class:`InMemoryPathfinder`: the same samples generated once and kept as uint8 tensors.
* :class:`PathfinderStored`: a dataset written by
  :func:`~crbp_d2.pathfinder.data.storage.generate_dataset` (png or npy), or the authors' PNGs
  through a "path label" list.
* :func:`build_dataset`: the train or test set a config's ``DATA`` node describes
  (``DATA.SOURCE``: ``on_the_fly``, ``memory`` or ``disk``).

Flips come from ``(flip_seed, index, epoch)`` (``set_epoch`` draws new ones), never from global
RNG state, so resumed runs and every DataLoader worker layout see the same items.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from crbp_d2.contours.generator import PathfinderParams, get_generator, preset, sample_rng

from .storage import StoredPathfinder, resize_uint8

FLIP_NONE, FLIP_LR, FLIP_UD, FLIP_BOTH = 0, 1, 2, 3
_FLIP_STREAM = 1  # SeedSequence word separating flip draws from the generator's stream


def random_flip_code(flip_seed: int, index: int, epoch: int = 0) -> int:
    """Uniform flip code in {0: none, 1: left-right, 2: up-down, 3: both} for ``index``."""
    return int(sample_rng(flip_seed, index, _FLIP_STREAM, int(epoch)).integers(4))


def apply_flip(image: Tensor, label: Tensor, code: int) -> Tuple[Tensor, Tensor]:
    """Flip a (1, H, W) image and its (H, W) label by a flip code (``FLIP_*``)."""
    if code & FLIP_LR:
        image, label = image.flip(-1), label.flip(-1)
    if code & FLIP_UD:
        image, label = image.flip(-2), label.flip(-2)
    return image, label


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
    ) -> Tuple[Tensor, Tensor]:
        if image.dtype != np.uint8 or label.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(
                f"expected (H, W) uint8 image and label, got {image.dtype}{image.shape} "
                f"and {label.dtype}{label.shape}"
            )
        image, label = self._resize(image), self._resize(label)
        image_t = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
        label_t = torch.from_numpy(
            (label.astype(np.float32) / 255.0 > self.label_threshold).astype(np.int64)
        )
        if self.flip and flip_code:
            image_t, label_t = apply_flip(image_t, label_t, flip_code)
        return image_t, label_t

    def __repr__(self) -> str:
        return (
            f"PathfinderTransform(size={self.size}, label_threshold={self.label_threshold}, "
            f"flip={self.flip}, resample={self.resample!r})"
        )


class _FlipsByEpoch(Dataset):
    """Base of the datasets: the flip of item ``index`` is a function of (seed, index, epoch)."""

    flip_seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw other flips (same samples) for this epoch."""
        self.epoch = int(epoch)

    def _flip(self, index: int) -> int:
        return random_flip_code(self.flip_seed, index, self.epoch)


class PathfinderOnTheFly(_FlipsByEpoch):
    """Sample ``i`` of ``seed`` generated on demand; ``len`` = ``num``.

    params: a ``PathfinderParams`` or a contour length (``preset``). transform: default
    ``PathfinderTransform()`` (150 px); ``raw=True`` returns the uint8 (image, label) arrays at
    the canvas size instead. flip_seed: defaults to ``seed``.
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


class InMemoryPathfinder(_FlipsByEpoch):
    """Samples 0..num-1 of ``seed`` generated once and kept as uint8 tensors (fast CPU epochs).

    Items are those of :class:`PathfinderOnTheFly` with the same parameters: resized by the
    paper's transform to ``image_size``, flipped by ``(seed, index, epoch)`` when ``random_flip``.
    """

    def __init__(
        self, params: PathfinderParams, num: int, seed: int, image_size: int, random_flip: bool
    ) -> None:
        source = PathfinderOnTheFly(params, num, seed, PathfinderTransform(image_size, flip=False))
        pairs = [source[i] for i in range(num)]
        self.images = torch.stack([(p[0] * 255).round().to(torch.uint8) for p in pairs])
        self.labels = torch.stack([p[1].to(torch.uint8) for p in pairs])
        self.params = params
        self.seed = self.flip_seed = seed
        self.random_flip = random_flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image = self.images[index].float() / 255.0
        label = self.labels[index].long()
        if self.random_flip:
            image, label = apply_flip(image, label, self._flip(index))
        return image, label


class PathfinderStored(_FlipsByEpoch):
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


class _FirstItems(Dataset):
    """The first ``size`` items of a dataset, forwarding ``set_epoch``."""

    def __init__(self, dataset: _FlipsByEpoch, size: int) -> None:
        self.dataset, self.size = dataset, size

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        return self.dataset[index]


# -- datasets from a config --------------------------------------------------------------------


def generator_params(cfg, length: int) -> PathfinderParams:
    """Generator settings for contour ``length`` from ``cfg.DATA`` (canvas size, extra keys)."""
    extra = dict(cfg.DATA.GENERATOR)
    if cfg.DATA.CANVAS_SIZE != 300 and "canvas_size" not in extra:
        extra["canvas_size"] = cfg.DATA.CANVAS_SIZE
    try:
        return preset(length, **extra)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad DATA.GENERATOR / DATA.CANVAS_SIZE settings: {err}") from None


def marker_radius_at_input(cfg) -> float:
    """Radius of the marker disk in pixels of the network input (5 px on a 300 canvas -> 2.5)."""
    params = generator_params(cfg, cfg.DATA.TEST_LENGTH)
    return params.marker_radius * cfg.DATA.IMAGE_SIZE / params.canvas_size


def build_dataset(
    cfg, split: str, length: Optional[int] = None, size: Optional[int] = None
) -> Dataset:
    """The ``train`` or ``test`` set described by ``cfg.DATA`` (contour ``length`` and number of
    images ``size`` overridable; for ``disk``, 0 = all). Items: image float (1, S, S) in [0, 1],
    label int64 (S, S), S = ``DATA.IMAGE_SIZE``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = cfg.DATA
    if length is None:
        length = d.TRAIN_LENGTH if split == "train" else d.TEST_LENGTH
    if size is None:
        size = d.TRAIN_SIZE if split == "train" else d.TEST_SIZE
    seed = d.SEED if split == "train" else d.TEST_SEED
    if d.SOURCE == "disk":
        if not os.path.isdir(d.ROOT):
            raise FileNotFoundError(
                f"Pathfinder data folder not found: {d.ROOT!r} (DATA.ROOT); generate it with "
                "tools/generate_pathfinder.py or use DATA.SOURCE on_the_fly"
            )
        transform = PathfinderTransform(d.IMAGE_SIZE, flip=d.RANDOM_FLIP)
        stored = PathfinderStored(d.ROOT, split, length, transform, flip_seed=seed)
        return _FirstItems(stored, size) if 0 < size < len(stored) else stored
    params = generator_params(cfg, length)
    if d.SOURCE == "memory":
        return InMemoryPathfinder(params, size, seed, d.IMAGE_SIZE, d.RANDOM_FLIP)
    transform = PathfinderTransform(d.IMAGE_SIZE, flip=d.RANDOM_FLIP)
    return PathfinderOnTheFly(params, size, seed, transform)
