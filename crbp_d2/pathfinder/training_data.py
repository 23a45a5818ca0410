"""Datasets as the trainer and the analyses see them: items ``(image, label)`` with image float
(1, H, W) in [0, 1] and label int64 (H, W) in {0, 1}.

``DATA.SOURCE``:

- ``on_the_fly``: sample ``i`` of seed ``DATA.SEED`` is generated when it is read (deterministic).
- ``memory``: the same samples generated once, kept as uint8 tensors (fast epochs on a CPU).
- ``disk``: files written by ``tools/generate_pathfinder.py`` under ``DATA.ROOT``
  (through :mod:`crbp_d2.pathfinder.data`).

The transform is the paper's: canvas -> ``IMAGE_SIZE`` bicubic, label = resized mask > 0.2, and
the same random flip (none / left-right / up-down / both) of image and label, also at test time
when ``RANDOM_FLIP`` is on (as the authors' loader). Flips are a function of (seed, index,
epoch) (the trainer calls ``set_epoch``), so resumed runs and any worker layout see the same items.
The datasets are those of :mod:`crbp_d2.pathfinder.data`; ``memory`` caches them.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from crbp_d2.contours.generator import PathfinderParams, preset

from .data import PathfinderOnTheFly, PathfinderStored, PathfinderTransform, random_flip_code


def apply_flip(image: Tensor, label: Tensor, code: int) -> Tuple[Tensor, Tensor]:
    """Flip (1, H, W) image and (H, W) label by a flip code (1: left-right, 2: up-down, 3: both)."""
    if code & 1:
        image, label = image.flip(-1), label.flip(-1)
    if code & 2:
        image, label = image.flip(-2), label.flip(-2)
    return image, label


class InMemoryPathfinder(Dataset):
    """Samples 0..num-1 of ``seed`` generated once and kept as uint8 tensors (fast CPU epochs).

    Items are those of :class:`PathfinderOnTheFly` with the same parameters: resized by the
    paper's transform, flipped by ``(seed, index, epoch)`` (``set_epoch`` draws new flips).
    """

    def __init__(
        self, params: PathfinderParams, num: int, seed: int, image_size: int, random_flip: bool
    ) -> None:
        source = PathfinderOnTheFly(params, num, seed, PathfinderTransform(image_size, flip=False))
        pairs = [source[i] for i in range(num)]
        self.images = torch.stack([(p[0] * 255).round().to(torch.uint8) for p in pairs])
        self.labels = torch.stack([p[1].to(torch.uint8) for p in pairs])
        self.params = params
        self.seed = seed
        self.random_flip = random_flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image = self.images[index].float() / 255.0
        label = self.labels[index].long()
        if self.random_flip:
            image, label = apply_flip(image, label, random_flip_code(self.seed, index, self.epoch))
        return image, label


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
    """The ``train`` or ``test`` set described by ``cfg.DATA`` (contour ``length`` overridable).

    Items: image float (1, S, S) in [0, 1], label int64 (S, S), S = ``DATA.IMAGE_SIZE``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = cfg.DATA
    if length is None:
        length = d.TRAIN_LENGTH if split == "train" else d.TEST_LENGTH
    if size is None:
        size = d.TRAIN_SIZE if split == "train" else d.TEST_SIZE
    if d.SOURCE == "disk":
        return _disk_dataset(cfg, split, length, size)
    seed = d.SEED if split == "train" else d.TEST_SEED
    params = generator_params(cfg, length)
    if d.SOURCE == "memory":
        return InMemoryPathfinder(params, size, seed, d.IMAGE_SIZE, d.RANDOM_FLIP)
    transform = PathfinderTransform(d.IMAGE_SIZE, flip=d.RANDOM_FLIP)
    return PathfinderOnTheFly(params, size, seed, transform)


def _disk_dataset(cfg, split: str, length: int, size: int) -> Dataset:
    root = cfg.DATA.ROOT
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Pathfinder data folder not found: {root!r} (DATA.ROOT); generate it with "
            "tools/generate_pathfinder.py or use DATA.SOURCE on_the_fly"
        )
    transform = PathfinderTransform(cfg.DATA.IMAGE_SIZE, flip=cfg.DATA.RANDOM_FLIP)
    seed = cfg.DATA.SEED if split == "train" else cfg.DATA.TEST_SEED
    dataset = PathfinderStored(root, split, length, transform, flip_seed=seed)
    if 0 < size < len(dataset):
        dataset = _Subset(dataset, size)
    return dataset


class _Subset(Dataset):
    """The first ``size`` items of a dataset, forwarding ``set_epoch``."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        return self.dataset[index]
