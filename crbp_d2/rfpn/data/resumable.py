"""A Detectron2 training data loader that a resumed run continues exactly where it stopped.

Detectron2's ``build_detection_train_loader`` draws the data order from a seeded infinite stream
(``TrainingSampler``), but its augmentations (random resize, flip) use the global random
generators of whichever process maps the image (the trainer's, or a DataLoader worker's, seeded
when the iterator starts), and a resumed run starts that stream and those generators over. So
``--resume`` trains on other images than the uninterrupted run would have.

:class:`ResumableTrainLoader` yields the same batches (lists of mapped dicts, grouped by aspect
ratio as Detectron2 does) with two changes that make them a function of the batch number alone:

* the sample at per-rank position ``p`` of the sampler's stream is mapped with ``random``,
  ``np.random`` and torch's CPU generator seeded from ``(seed, rank, p)`` (and the generators are
  restored afterwards: mapping in the trainer process does not disturb the model's randomness);
  the number of DataLoader workers does not change the data;
* :meth:`~ResumableTrainLoader.state_dict` is the stream seed and the number of batches handed
  out; after :meth:`~ResumableTrainLoader.load_state_dict`, a new iterator replays the cheap part
  of the stream (sampler indices and aspect-ratio buckets, no image is read except the ones still
  waiting in a bucket) and continues with the next batch.

The trainer (``crbp_d2.rfpn.train.trainer.Trainer``) saves this state in each checkpoint.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import worker_init_reset_seed
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import (
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from detectron2.utils import comm
from torch.utils import data as torchdata

from ...utils.rng import derived_seed, seeded_rng

__all__ = [
    "DatasetError",
    "DatasetItemError",
    "EvaluationItemError",
    "MIN_IMAGE_SIDE",
    "NamedItemMapper",
    "build_checked_test_loader",
    "check_panoptic_categories",
    "checked_detection_test_loader",
    "item_error_line",
    "load_test_dicts",
    "load_training_dicts",
    "ResumableTrainLoader",
    "build_resumable_train_loader",
    "resumable_detection_train_loader",
]

logger = logging.getLogger(__name__)

SamplerFactory = Callable[[int], torchdata.Sampler]
# one stream item: per-rank position in the sampler's stream, dataset index
Item = Tuple[int, int]


def _identity(x):
    return x


class ResumableTrainLoader:
    """An iterable of training batches (``list[dict]`` of ``total_batch_size / world_size``
    mapped dicts) that can be saved and continued; see the module docstring.

    Args:
        dataset: the dataset dicts (``get_detection_dataset_dicts``).
        mapper: dataset dict -> model input dict (``DatasetMapper(cfg, True)``); returning None
            skips the sample (another one, chosen from the position's seed, is mapped instead).
        sampler_factory: stream seed -> a Detectron2 training sampler with that seed (an infinite
            stream of dataset indices, this rank's share).
        total_batch_size: images per iteration over all processes.
        aspect_ratio_grouping: batch landscape and portrait images separately (Detectron2's
            ``AspectRatioGroupedDataset``; the aspect ratio is read from the dataset dict's
            ``width`` / ``height``, from the mapped dict where the dataset dict has none).
        num_workers: DataLoader worker processes (0: map in this process).
        seed: the stream seed; None: ``comm.shared_random_seed()`` (from ``np.random``, as
            Detectron2's samplers draw theirs: fixed by ``SEED``).
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        mapper: Callable[[dict], Optional[dict]],
        *,
        sampler_factory: SamplerFactory,
        total_batch_size: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        seed: Optional[int] = None,
    ) -> None:
        world_size = comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be a positive multiple of the "
                f"number of processes ({world_size})"
            )
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.batch_size = total_batch_size // world_size
        self.aspect_ratio_grouping = bool(aspect_ratio_grouping)
        self.num_workers = int(num_workers)
        self._rank = comm.get_rank()
        self._world_size = world_size
        self._size = len(dataset)
        # 0 landscape, 1 portrait, -1 unknown (read from the mapped dict)
        self._groups = np.array([_group_of(d) for d in dataset], dtype=np.int8)
        self._seeded_map = _SeededMap(DatasetFromList(list(dataset), copy=False), mapper)
        self._sampler_factory = sampler_factory
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self._sampler = sampler_factory(self.seed)
        self.batches = 0  # batches handed out so far (over all iterators)
        self.state_loaded = False

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        return {
            "seed": self.seed,
            "batches": self.batches,
            "batch_size": self.batch_size,
            "world_size": self._world_size,
            "dataset_size": self._size,
            "aspect_ratio_grouping": self.aspect_ratio_grouping,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue after the ``state["batches"]`` batches of the stream ``state["seed"]`` (a
        different batch size, process count or dataset continues that stream, with a warning:
        the data then differs from an uninterrupted run)."""
        now = self.state_dict()
        changed = [
            f"{key} {state[key]} -> {now[key]}"
            for key in ("batch_size", "world_size", "dataset_size", "aspect_ratio_grouping")
            if key in state and state[key] != now[key]
        ]
        if changed:
            logger.warning(
                "Resuming the training data with changed settings (%s): the data order is "
                "continued, but it is not what the uninterrupted run would have seen",
                ", ".join(changed),
            )
        self.skip_to(int(state["batches"]), seed=int(state["seed"]))
        self.state_loaded = True

    def skip_to(self, batches: int, seed: Optional[int] = None) -> None:
        """The next iterator starts with batch number ``batches`` (0-based) of the stream
        ``seed`` (default: the current one)."""
        if batches < 0:
            raise ValueError(f"batches must be >= 0, got {batches}")
        if seed is not None and int(seed) != self.seed:
            self.seed = int(seed)
            self._sampler = self._sampler_factory(self.seed)
        self.batches = batches

    # -- mapping -----------------------------------------------------------------------------

    def _map(self, position: int, index: int) -> dict:
        return self._seeded_map(self.seed, position, index)

    def _group(self, position: int, index: int, data: Optional[dict] = None) -> int:
        if not self.aspect_ratio_grouping:
            return 0
        group = int(self._groups[index])
        if group >= 0:
            return group
        if data is None:
            data = self._map(position, index)
        return _group_of(data, strict=True)

    # -- iteration ---------------------------------------------------------------------------

    def _stream(self, start: int) -> Iterator[Item]:
        """(position, index) of this rank's sampler stream from ``start`` on."""
        return itertools.islice(enumerate(iter(self._sampler)), start, None)

    def _replay(self, batches: int) -> Tuple[List[List[Item]], int]:
        """The buckets' contents after ``batches`` batches, and the next stream position."""
        buckets: List[List[Item]] = [[], []]
        if batches == 0:
            return buckets, 0
        done = 0
        for position, index in self._stream(0):
            bucket = buckets[self._group(position, index)]
            bucket.append((position, index))
            if len(bucket) == self.batch_size:
                del bucket[:]
                done += 1
                if done == batches:
                    return buckets, position + 1
        raise AssertionError("the sampler's stream ended")  # pragma: no cover (infinite)

    def _mapped_stream(self, start: int) -> Iterator[Tuple[int, int, dict]]:
        if self.num_workers == 0:
            return ((p, i, self._map(p, i)) for p, i in self._stream(start))
        generator = torch.Generator()  # worker seeds from here, not from the global generator
        generator.manual_seed(derived_seed(self.seed, self._rank, start, 1))
        return iter(
            torchdata.DataLoader(
                _MappedStream(self._sampler, self._seeded_map, self.seed, start),
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=_identity,
                worker_init_fn=worker_init_reset_seed,
                generator=generator,
            )
        )

    def __iter__(self) -> Iterator[List[dict]]:
        # a generator: nothing runs (no worker starts) before the first batch is asked for, so a
        # state loaded after iter() (the trainer's resume) still applies
        buckets_items, start = self._replay(self.batches)
        buckets = [[self._map(p, i) for p, i in items] for items in buckets_items]
        for position, index, data in self._mapped_stream(start):
            bucket = buckets[self._group(position, index, data)]
            bucket.append(data)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                del bucket[:]
                self.batches += 1
                yield batch


class DatasetError(ValueError):
    """A training dataset that cannot be used: empty, or an annotation that does not fit its
    file's categories (message: one line naming the dataset and its annotation file)."""


class DatasetItemError(DatasetError):
    """A training item that cannot be loaded (message: one line naming its image file)."""


def item_error_line(error: BaseException) -> str:
    """The one-line message of ``error``; for one raised in a DataLoader worker (whose message
    is the worker's traceback, ``Original Traceback ...``), the last line's message."""
    message = str(error)
    if "Original Traceback" in message:
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(message.split())


class EvaluationItemError(DatasetError):
    """An item of a test dataset that cannot be loaded (message: one line naming its image file
    and the dataset). Not a :class:`DatasetItemError`: the training loop's handler of bad
    training items does not take it."""


# Images with a side below this many pixels (a 1x1 image in the annotation file) hold nothing the
# model can learn from or be scored on (they are upscaled to INPUT.MIN_SIZE_*): refused when the
# dataset is loaded, naming the file.
MIN_IMAGE_SIDE = 8


def _annotation_files(names: Sequence[str]) -> str:
    files = []
    for name in names:
        metadata = MetadataCatalog.get(name)
        files += [metadata.get(f) for f in ("json_file", "panoptic_json") if metadata.get(f, None)]
    return ", ".join(files) or "no annotation file registered"


def load_training_dicts(names: Sequence[str], **kwargs: Any) -> List[dict]:
    """Detectron2's ``get_detection_dataset_dicts(names, **kwargs)``; an empty dataset, an
    annotation whose category id is not in its file's ``categories`` or an image smaller than
    :data:`MIN_IMAGE_SIDE` is one :class:`DatasetError` line naming the dataset and the
    annotation file (not a traceback)."""
    return _load_dicts(names, "training", **kwargs)


def load_test_dicts(names: Sequence[str], **kwargs: Any) -> List[dict]:
    """:func:`load_training_dicts` for the test datasets (``filter_empty=False`` by default, as
    Detectron2's test loader), and the panoptic JSON's segment categories checked
    (:func:`check_panoptic_categories`: the evaluation reads it)."""
    kwargs.setdefault("filter_empty", False)
    names = [names] if isinstance(names, str) else list(names)
    check_panoptic_categories(names)
    return _load_dicts(names, "test", **kwargs)


def _load_dicts(names: Sequence[str], split: str, **kwargs: Any) -> List[dict]:
    names = [names] if isinstance(names, str) else list(names)
    try:
        dicts = get_detection_dataset_dicts(names, **kwargs)
    except AssertionError as error:  # "Dataset 'x' is empty!", "No valid data found in x."
        raise DatasetError(
            f"{split} dataset(s) {', '.join(names)}: {error} (annotation file(s): "
            f"{_annotation_files(names)})"
        ) from None
    except KeyError as error:  # a category id the file's 'categories' do not have
        detail = error.args[0] if error.args else error
        raise DatasetError(
            f"{split} dataset(s) {', '.join(names)}, annotation file(s) "
            f"{_annotation_files(names)}: {detail}"
        ) from None
    check_image_sizes(dicts, names, split)
    return dicts


def check_image_sizes(dicts: Sequence[dict], names: Sequence[str], split: str = "training") -> None:
    """Raise a one-line :class:`DatasetError` naming the first image whose ``width`` or
    ``height`` (as the annotation file gives them) is below :data:`MIN_IMAGE_SIDE`."""
    for d in dicts:
        width, height = d.get("width"), d.get("height")
        if (
            isinstance(width, int)
            and isinstance(height, int)
            and min(width, height) < MIN_IMAGE_SIDE
        ):
            raise DatasetError(
                f"{split} dataset(s) {', '.join(names)}: image {d.get('file_name', '?')} is "
                f"{width}x{height} pixels, below the {MIN_IMAGE_SIDE} px a side the model needs "
                f"(annotation file(s): {_annotation_files(names)}); remove it from the file"
            )


_CHECKED_PANOPTIC: set = set()  # (path, size, mtime) of panoptic JSON files found valid


def check_panoptic_categories(names: Sequence[str]) -> None:
    """For each dataset with a ``panoptic_json`` (COCO panoptic, as the PQ evaluation reads it):
    raise a one-line :class:`DatasetError` naming the file, the image and the id for a segment
    whose ``category_id`` is not in the file's ``categories`` (else ignored by the evaluation).
    Each file is read once per process."""
    for name in [names] if isinstance(names, str) else names:
        path = MetadataCatalog.get(name).get("panoptic_json", None)
        if not path or not os.path.isfile(path):
            continue
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
        if key in _CHECKED_PANOPTIC:
            continue
        try:
            with open(path) as f:
                content = json.load(f)
        except ValueError as error:
            raise DatasetError(f"panoptic annotation file {path}: not JSON ({error})") from None
        known = {c.get("id") for c in content.get("categories", []) if isinstance(c, dict)}
        for annotation in content.get("annotations", []):
            for segment in annotation.get("segments_info", []):
                category = segment.get("category_id")
                if category not in known:
                    raise DatasetError(
                        f"panoptic annotation file {path} (dataset {name}): segment "
                        f"{segment.get('id')} of {annotation.get('file_name', '?')} has "
                        f"category_id={category}, which is not in the file's 'categories' (ids "
                        f"{', '.join(str(k) for k in sorted(known, key=str))})"
                    )
        _CHECKED_PANOPTIC.add(key)


def _item_failure(error: BaseException) -> str:
    """``Type: message`` of a mapping error, one line; an error without a message (a bare
    ``assert``) is described by the failing source line."""
    detail = " ".join(str(error).split())[:200]
    if not detail:
        frames = traceback.extract_tb(error.__traceback__)
        if frames:
            last = frames[-1]
            detail = f"{last.line} failed ({os.path.basename(last.filename)}:{last.lineno})"
    return f"{type(error).__name__}: {detail or 'no detail'}"


class NamedItemMapper:
    """A dataset mapper whose failures (a truncated or unreadable image) are one
    :class:`EvaluationItemError` line naming the image file and the dataset."""

    def __init__(self, mapper: Callable[[dict], Any], names: str = "") -> None:
        self.mapper = mapper
        self.names = names

    def __call__(self, item: dict) -> Any:
        try:
            return self.mapper(item)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as error:
            name = item.get("file_name", "?") if isinstance(item, dict) else "?"
            where = f" of {self.names}" if self.names else ""
            raise EvaluationItemError(
                f"cannot load test item{where}, image {name}: {_item_failure(error)}"
            ) from error


def build_checked_test_loader(
    cfg: CfgNode, dataset_name: str, mapper: Optional[Callable[[dict], Any]] = None
):
    """Detectron2's ``build_detection_test_loader(cfg, dataset_name)`` with the test dataset
    checked as the training one (:func:`load_test_dicts`) and a bad image named
    (:class:`NamedItemMapper`)."""
    dicts = load_test_dicts(
        [dataset_name],
        proposal_files=(
            [cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(dataset_name)]]
            if cfg.MODEL.LOAD_PROPOSALS
            else None
        ),
    )
    return build_detection_test_loader(
        dicts,
        mapper=NamedItemMapper(mapper or DatasetMapper(cfg, False), dataset_name),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def checked_detection_test_loader(
    dataset: Any, *, mapper: Callable[[dict], Any], dataset_names: str = "", **kwargs: Any
):
    """``build_detection_test_loader(dataset, mapper=mapper, **kwargs)`` (a LazyConfig's
    ``dataloader.test``) with a bad image named (:class:`NamedItemMapper`; ``dataset_names``:
    the datasets, for the message)."""
    mapper = NamedItemMapper(mapper, dataset_names)
    return build_detection_test_loader(dataset, mapper=mapper, **kwargs)


class _SeededMap:
    """The mapped sample at a rank's stream position, with ``random``, ``np.random`` and torch's
    CPU generator seeded from (stream seed, rank, position) and restored afterwards."""

    def __init__(self, dataset: DatasetFromList, mapper: Callable[[dict], Optional[dict]]) -> None:
        self.dataset = dataset
        self.mapper = mapper
        self.rank = comm.get_rank()

    def __call__(self, seed: int, position: int, index: int) -> dict:
        with seeded_rng(derived_seed(seed, self.rank, position)):
            for _ in range(100):
                data = self._map(index)
                if data is not None:
                    return data
                # the seeded generator picks the replacement: the same on every replay
                logger.warning("The mapper skipped dataset item %d; trying another one", index)
                index = int(np.random.randint(len(self.dataset)))
        raise RuntimeError("the mapper returned None for 100 samples in a row")

    def _map(self, index: int) -> Optional[dict]:
        item = self.dataset[index]
        try:
            return self.mapper(item)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as error:  # a truncated / unreadable image, a bad annotation
            name = item.get("file_name", "?") if isinstance(item, dict) else "?"
            raise DatasetItemError(
                f"cannot load training item {index} of the dataset, image {name}: "
                f"{_item_failure(error)}"
            ) from error


class _MappedStream(torchdata.IterableDataset):
    """The mapped stream from ``start`` on, each DataLoader worker mapping every
    ``num_workers``-th item (the DataLoader interleaves them back in stream order)."""

    def __init__(
        self, sampler: torchdata.Sampler, seeded_map: _SeededMap, seed: int, start: int
    ) -> None:
        self.sampler = sampler
        self.seeded_map = seeded_map
        self.seed = seed
        self.start = start

    def __iter__(self) -> Iterator[Tuple[int, int, dict]]:
        items = itertools.islice(enumerate(iter(self.sampler)), self.start, None)
        info = torchdata.get_worker_info()
        if info is not None and info.num_workers > 1:
            items = itertools.islice(items, info.id, None, info.num_workers)
        for position, index in items:
            yield position, index, self.seeded_map(self.seed, position, index)


def _group_of(d: dict, strict: bool = False) -> int:
    if "width" in d and "height" in d:
        return 0 if d["width"] > d["height"] else 1
    if strict:
        raise KeyError("aspect-ratio grouping needs 'width' and 'height' in the mapped dicts")
    return -1


def build_resumable_train_loader(
    cfg: CfgNode, mapper: Optional[Callable[[dict], Optional[dict]]] = None
) -> ResumableTrainLoader:
    """What ``build_detection_train_loader(cfg, mapper)`` builds (``DATASETS.TRAIN``,
    ``DATALOADER.*``, ``SOLVER.IMS_PER_BATCH``; ``DatasetMapper(cfg, True)`` by default), as a
    :class:`ResumableTrainLoader`."""
    dataset = load_training_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    if mapper is None:
        mapper = DatasetMapper(cfg, True)
    name = cfg.DATALOADER.SAMPLER_TRAIN
    logger.info("Using training sampler %s (resumable)", name)
    size = len(dataset)
    factory: SamplerFactory
    if name == "TrainingSampler":

        def factory(seed: int) -> torchdata.Sampler:
            return TrainingSampler(size, seed=seed)

    elif name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset, cfg.DATALOADER.REPEAT_THRESHOLD
        )

        def factory(seed: int) -> torchdata.Sampler:
            return RepeatFactorTrainingSampler(factors, seed=seed)

    elif name == "RandomSubsetTrainingSampler":
        ratio = cfg.DATALOADER.RANDOM_SUBSET_RATIO

        def factory(seed: int) -> torchdata.Sampler:
            return RandomSubsetTrainingSampler(
                size, ratio, seed_shuffle=seed, seed_subset=(seed + 1) % 2**31
            )

    else:
        raise ValueError(f"Unknown training sampler: {name}")
    return ResumableTrainLoader(
        dataset,
        mapper,
        sampler_factory=factory,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def resumable_detection_train_loader(
    dataset: Any,
    *,
    mapper: Callable[[dict], Optional[dict]],
    sampler: Optional[torchdata.Sampler] = None,
    total_batch_size: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
):
    """``build_detection_train_loader`` with explicit arguments (a LazyConfig's
    ``dataloader.train``) as a :class:`ResumableTrainLoader` where that is possible: a list of
    dataset dicts, a mapper, no sampler or a plain ``TrainingSampler`` (its seed and shuffle are
    kept), no ``collate_fn``. Otherwise Detectron2's loader, with a warning (not resumable)."""
    plain_sampler = sampler is None or type(sampler) is TrainingSampler
    if isinstance(dataset, list) and mapper is not None and plain_sampler and collate_fn is None:
        size = len(dataset)
        shuffle = True if sampler is None else bool(sampler._shuffle)

        def factory(seed: int) -> torchdata.Sampler:
            return TrainingSampler(size, shuffle=shuffle, seed=seed)

        return ResumableTrainLoader(
            dataset,
            mapper,
            sampler_factory=factory,
            total_batch_size=total_batch_size,
            aspect_ratio_grouping=aspect_ratio_grouping,
            num_workers=num_workers,
            seed=None if sampler is None else sampler._seed,
        )
    logger.warning(
        "The training loader is not resumable (it needs a list of dataset dicts, a mapper, a "
        "TrainingSampler and no collate_fn): a resumed run will see other data than an "
        "uninterrupted one"
    )
    return build_detection_train_loader(
        dataset,
        mapper=mapper,
        sampler=sampler,
        total_batch_size=total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
