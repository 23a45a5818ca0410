"""Writing a synthetic panoptic dataset in the exact COCO panoptic format, so everything runs
without COCO: a :class:`SyntheticScene` (its categories and how one image is drawn; the scenes
are :mod:`.shapes` and :mod:`.contours`) rendered image by image, in worker processes.

Layout written under ``root`` (the same layout as COCO, with ``train``/``val`` for the year-suffixed
names)::

    train/ val/                                  images, 000000000001.jpg ...
    panoptic_train/ panoptic_val/                panoptic PNGs (RGB-encoded segment ids)
    panoptic_stuff_train/ panoptic_stuff_val/    "separated" semantic PNGs (Panoptic FPN)
    annotations/panoptic_{train,val}.json        COCO panoptic annotations
    annotations/instances_{train,val}.json       COCO instance annotations (polygons; RLE crowds)
    generation.json                              the parameters it was generated with

The output is a pure function of the parameters (same bytes for the same seed). Generation writes
into a temporary sibling folder that is renamed into place at the end, so an interrupted run never
leaves a partial dataset, and concurrent first uses agree on one copy.
"""

import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image
from scipy import ndimage

from ..utils.procs import die_with_parent, pool_initargs
from .panoptic import id2rgb, rgb2id, write_separated_semantic

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

SPLITS: Tuple[str, ...] = ("train", "val")
DEFAULT_NUM_TRAIN = 64
DEFAULT_NUM_VAL = 16
DEFAULT_IMAGE_SIZE = 160
DEFAULT_SEED = 0
MANIFEST_NAME = "generation.json"

_IMAGE_ID_OFFSET = {"train": 0, "val": 1_000_000}
_MAX_IMAGES_PER_SPLIT = 999_999
_JPEG_QUALITY = 95


@dataclass(frozen=True)
class SplitPaths:
    """Where one split of a COCO-panoptic-layout dataset lives."""

    image_root: str
    panoptic_root: str
    panoptic_json: str
    sem_seg_root: str
    instances_json: str


def split_paths(root: PathLike, split: str) -> SplitPaths:
    """The files of ``split`` ("train" or "val") of the synthetic dataset under ``root``."""
    if split not in SPLITS:
        raise ValueError(f"Unknown synthetic panoptic split {split!r}; expected one of {SPLITS}")
    root = os.fspath(root)
    return SplitPaths(
        image_root=os.path.join(root, split),
        panoptic_root=os.path.join(root, f"panoptic_{split}"),
        panoptic_json=os.path.join(root, "annotations", f"panoptic_{split}.json"),
        sem_seg_root=os.path.join(root, f"panoptic_stuff_{split}"),
        instances_json=os.path.join(root, "annotations", f"instances_{split}.json"),
    )


def datasets_root() -> Path:
    """Where every dataset lives, by Detectron2's own rule: ``$DETECTRON2_DATASETS``, else
    ``./datasets`` (relative to the working directory), for COCO and the synthetic sets alike."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser()


def default_synthetic_root() -> Path:
    """Default location of the synthetic dataset: ``<datasets root>/synthetic_panoptic``."""
    return datasets_root() / "synthetic_panoptic"


def is_complete(root: PathLike) -> bool:
    """Whether ``root`` holds a finished synthetic dataset (its manifest is written last)."""
    root = Path(root)
    if not (root / MANIFEST_NAME).is_file():
        return False
    for split in SPLITS:
        paths = split_paths(root, split)
        if not (os.path.isfile(paths.panoptic_json) and os.path.isfile(paths.instances_json)):
            return False
    return True


@dataclass(frozen=True)
class Segment:
    """One panoptic segment of a rendered image (its pixels are where the id map equals
    ``segment_id``)."""

    segment_id: int
    category_id: int
    iscrowd: bool


RenderResult = Tuple[np.ndarray, np.ndarray, List[Segment]]


def _any_parameters_fit(image_size: int, params: Mapping[str, Any]) -> None:
    """The default :attr:`SyntheticScene.check` (a named function: scenes go to worker
    processes)."""


@dataclass(frozen=True)
class SyntheticScene:
    """One kind of synthetic panoptic image: its categories and how a sample is drawn.

    Attributes:
        name: written to the manifest (``"shapes"``, ``"contours"``).
        version: bump when the output for the same parameters changes.
        categories: COCO panoptic categories (``isthing`` 1 or 0), unique ids.
        render: ``render(rng, image_size, params) -> (image (S, S, 3) uint8, segment-id map
            (S, S) uint32 with 0 = VOID, segments)``.
        defaults: the scene's own generation parameters and their defaults.
        check: ``check(image_size, params)`` raises ``ValueError`` (one clear message) when the
            parameters cannot give an image.
        instance_masks: how ``instances_*.json`` stores a non-crowd thing: ``"polygon"`` (COCO's
            usual form; outer contours through the boundary pixel centres) or ``"rle"`` (exact;
            train with ``INPUT.MASK_FORMAT bitmask``). Crowds are always RLE.
    """

    name: str
    version: int
    categories: Tuple[Dict, ...]
    render: Callable[[np.random.Generator, int, Mapping[str, Any]], RenderResult]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[int, Mapping[str, Any]], None] = _any_parameters_fit
    instance_masks: str = "polygon"

    @property
    def thing_categories(self) -> Tuple[Dict, ...]:
        return tuple(c for c in self.categories if c["isthing"])

    @property
    def stuff_categories(self) -> Tuple[Dict, ...]:
        return tuple(c for c in self.categories if not c["isthing"])

    def parameters(self, given: Mapping[str, Any]) -> Dict[str, Any]:
        """The scene parameters: ``given`` over the defaults (unknown names are an error)."""
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"unknown {self.name} generation parameter(s): {', '.join(unknown)}; known: "
                f"{', '.join(sorted(self.defaults)) or 'none'}"
            )
        return {**self.defaults, **given}


def make_synthetic_dataset(
    scene: SyntheticScene,
    root: PathLike,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    workers: Optional[int] = None,
    **scene_params: Any,
) -> Path:
    """Generate a synthetic panoptic dataset of ``scene`` into ``root`` and return its path.

    Args:
        num_train, num_val: images per split (at least 1 each).
        image_size: side of the square images in pixels (64 to 1024).
        seed: the dataset is a deterministic function of the parameters.
        overwrite: replace an existing ``root``; otherwise an existing ``root`` is an error.
        workers: processes that render the images (None: one per CPU core, at most 8; the
            output does not depend on it).
        scene_params: the scene's own parameters (``scene.defaults``).

    Raises:
        FileExistsError: ``root`` exists and ``overwrite`` is False (also when another process
            finished the same folder first).
    """
    _check_positive_int("num_train", num_train, _MAX_IMAGES_PER_SPLIT)
    _check_positive_int("num_val", num_val, _MAX_IMAGES_PER_SPLIT)
    _check_positive_int("image_size", image_size, 1024, minimum=64)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    params = scene.parameters(scene_params)
    scene.check(image_size, params)
    root = Path(root)
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} already exists; use overwrite=True (CLI: --force)")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write_dataset(staging, scene, num_train, num_val, image_size, int(seed), params, workers)
        _publish(staging, root, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def ensure_synthetic_dataset(scene: SyntheticScene, root: PathLike, **generation: Any) -> Path:
    """Return ``root``, generating the ``scene`` dataset there first if it does not exist.
    Safe to call from several processes at once.

    Args:
        generation: keyword arguments of :func:`make_synthetic_dataset` (``num_train``,
            ``num_val``, ``image_size``, ``seed`` and the scene's own); the defaults where not
            given. An existing dataset must have been generated with the given ones (its
            manifest is checked).

    Raises:
        ValueError: an existing dataset was generated with other parameters than ``generation``.
    """
    unknown = set(generation) - set(_GENERATION_KEYS) - set(scene.defaults)
    if unknown:
        raise TypeError(f"unknown generation parameter(s): {', '.join(sorted(unknown))}")
    root = Path(root)
    if is_complete(root):
        _check_manifest(root, scene, generation)
        return root
    if root.exists():
        raise FileNotFoundError(
            f"{root} exists but is not a complete synthetic panoptic dataset ({scene.name}; no "
            f"{MANIFEST_NAME} or annotation json); delete it to regenerate it on first use"
        )
    logger.info(f"Generating the synthetic {scene.name} dataset in {root} (first use) ...")
    try:
        make_synthetic_dataset(scene, root, **generation)
    except FileExistsError:
        if not is_complete(root):  # someone else created it, but not as a finished dataset
            raise
        _check_manifest(root, scene, generation)
    return root


_GENERATION_KEYS = ("num_train", "num_val", "image_size", "seed")


def _check_manifest(root: Path, scene: SyntheticScene, generation: Dict[str, Any]) -> None:
    with open(root / MANIFEST_NAME) as f:
        manifest = json.load(f)
    if manifest.get("scene", "shapes") != scene.name:  # manifests before scenes had names
        raise ValueError(
            f"{root} holds a synthetic {manifest.get('scene')!r} dataset, not {scene.name!r}; "
            "use another folder"
        )
    differ = {k: (manifest.get(k), v) for k, v in generation.items() if manifest.get(k) != v}
    if differ:
        found = ", ".join(f"{k}={old} (wanted {new})" for k, (old, new) in differ.items())
        raise ValueError(
            f"{root} was generated with {found}; delete it to regenerate it on first use"
        )


def _check_positive_int(name: str, value: int, maximum: int, minimum: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must lie in [{minimum}, {maximum}], got {value}")


def _publish(staging: Path, root: Path, overwrite: bool) -> None:
    """Move the finished ``staging`` folder to ``root`` with one rename."""
    if overwrite and root.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, retired / root.name)
        try:
            os.rename(staging, root)
        except OSError:
            os.replace(retired / root.name, root)  # put the old dataset back
            raise
        finally:
            shutil.rmtree(retired, ignore_errors=True)
        return
    try:
        os.rename(staging, root)  # atomic; fails if another process published a non-empty root
    except OSError as e:
        if root.exists():
            raise FileExistsError(f"{root} was created by another process meanwhile") from e
        raise


# ----------------------------------------------------------------------------------------------
# Writing files


def _write_dataset(
    out: Path,
    scene: SyntheticScene,
    num_train: int,
    num_val: int,
    image_size: int,
    seed: int,
    params: Mapping[str, Any],
    workers: Optional[int] = None,
) -> None:
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        _write_split(out, scene, split, split_index, count, image_size, seed, params, workers)
    manifest = {
        "generator": __name__,
        "scene": scene.name,
        "version": scene.version,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        **params,
    }
    with open(out / MANIFEST_NAME, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def _write_split(
    out: Path,
    scene: SyntheticScene,
    split: str,
    split_index: int,
    count: int,
    image_size: int,
    seed: int,
    params: Mapping[str, Any],
    workers: Optional[int] = None,
) -> None:
    paths = split_paths(out, split)
    for folder in (paths.image_root, paths.panoptic_root, os.path.dirname(paths.panoptic_json)):
        os.makedirs(folder, exist_ok=True)
    images, panoptic_annotations, instance_annotations = [], [], []
    job = _SplitJob(scene, split, split_index, image_size, seed, dict(params), paths)
    for image, panoptic, instances in _map_in_order(job, count, workers):
        images.append(image)
        panoptic_annotations.append(panoptic)
        for annotation in instances:  # ids in image order, whatever the number of workers
            instance_annotations.append({"id": len(instance_annotations) + 1, **annotation})

    info = {"description": f"crbp_d2 synthetic {scene.name} dataset ({split})", "version": "1.0"}
    panoptic = {
        "info": info,
        "images": images,
        "annotations": panoptic_annotations,
        "categories": [dict(c) for c in scene.categories],
    }
    instances = {
        "info": info,
        "images": images,
        "annotations": instance_annotations,
        "categories": [
            {k: c[k] for k in ("id", "name", "supercategory")} for c in scene.thing_categories
        ],
    }
    for path, content in ((paths.panoptic_json, panoptic), (paths.instances_json, instances)):
        with open(path, "w") as f:
            f.write(json.dumps(content))  # json.dump's streaming encoder is ~5x slower
    # The semantic PNGs come from the panoptic files through the same code as
    # datasets/prepare_panoptic_fpn.py uses for COCO.
    write_separated_semantic(
        paths.panoptic_json,
        paths.panoptic_root,
        paths.sem_seg_root,
        num_workers=_worker_count(workers, count),
    )


@dataclass(frozen=True)
class _SplitJob:
    """What a worker needs to render and write images of one split."""

    scene: "SyntheticScene"
    split: str
    split_index: int
    image_size: int
    seed: int
    params: Dict[str, Any]
    paths: Any

    def __call__(self, indices: range) -> List[Tuple[Dict, Dict, List[Dict]]]:
        return [self.write_image(index) for index in indices]

    def write_image(self, index: int) -> Tuple[Dict, Dict, List[Dict]]:
        """Render image ``index`` (its own RNG: the result does not depend on the order or the
        worker), write its JPEG and panoptic PNG, and return its image entry, its panoptic
        annotation and its instance annotations (without ids)."""
        scene, paths = self.scene, self.paths
        thing_ids = {c["id"] for c in scene.thing_categories}
        image_id = _IMAGE_ID_OFFSET[self.split] + index + 1
        stem = f"{image_id:012d}"
        rng = np.random.default_rng([self.seed, self.split_index, index])
        image, segment_ids, segments = scene.render(rng, self.image_size, self.params)

        Image.fromarray(image).save(
            os.path.join(paths.image_root, stem + ".jpg"), quality=_JPEG_QUALITY
        )
        Image.fromarray(id2rgb(segment_ids)).save(os.path.join(paths.panoptic_root, stem + ".png"))
        entry = {
            "id": image_id,
            "file_name": stem + ".jpg",
            "height": self.image_size,
            "width": self.image_size,
        }
        segments_info, instances = [], []
        for segment in segments:
            mask = segment_ids == segment.segment_id
            area, bbox = int(mask.sum()), _mask_bbox(mask)
            segments_info.append(
                {
                    "id": segment.segment_id,
                    "category_id": segment.category_id,
                    "iscrowd": int(segment.iscrowd),
                    "area": area,
                    "bbox": bbox,
                }
            )
            if segment.category_id in thing_ids:
                instances.append(
                    {
                        "image_id": image_id,
                        "category_id": segment.category_id,
                        "iscrowd": int(segment.iscrowd),
                        "area": float(area),
                        "bbox": [float(v) for v in bbox],
                        "segmentation": (
                            _rle(mask)
                            if segment.iscrowd or scene.instance_masks == "rle"
                            else _polygons(mask)
                        ),
                    }
                )
        panoptic = {
            "image_id": image_id,
            "file_name": stem + ".png",
            "segments_info": segments_info,
        }
        return entry, panoptic, instances


# Images per task handed to a worker process; fewer images than this are rendered in-process.
_IMAGES_PER_TASK = 64


def _worker_count(workers: Optional[int], count: int) -> int:
    """Processes for ``count`` images: ``workers`` (None: one per CPU core, at most 8), at most
    one per task of :data:`_IMAGES_PER_TASK` images."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    return max(1, min(workers, -(-count // _IMAGES_PER_TASK)))


def _map_in_order(
    job: _SplitJob, count: int, workers: Optional[int]
) -> Iterable[Tuple[Dict, Dict, List[Dict]]]:
    """``job.write_image(i)`` for i in 0..count-1, in order, spread over ``workers`` processes
    (None: one per CPU core, at most 8)."""
    tasks = [range(a, min(a + _IMAGES_PER_TASK, count)) for a in range(0, count, _IMAGES_PER_TASK)]
    workers = _worker_count(workers, count)
    if workers <= 1:
        for task in tasks:
            yield from job(task)
        return
    with ProcessPoolExecutor(
        max_workers=workers, initializer=die_with_parent, initargs=pool_initargs()
    ) as pool:
        for records in pool.map(job, tasks):
            yield from records


def _mask_bbox(mask: np.ndarray) -> List[int]:
    """COCO ``[x, y, width, height]`` of a non-empty boolean mask."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return [int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)]


def _polygons(mask: np.ndarray) -> List[List[float]]:
    """Outer contours of a hole-free mask as COCO polygons (pixel centres, ``+0.5``)."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [
        [round(float(v) + 0.5, 2) for v in contour.reshape(-1)]
        for contour in contours
        if len(contour) >= 3
    ]


def _rle(mask: np.ndarray) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def contact_sheet(
    root: PathLike, split: str = "val", count: int = 8, columns: int = 4
) -> Image.Image:
    """A PIL image of the first ``count`` images of ``split`` under ``root``, each beside its
    panoptic segmentation (stuff in the category colour, every thing in its own colour, VOID
    black, thing outlines white)."""
    paths = split_paths(root, split)
    with open(paths.panoptic_json) as f:
        panoptic = json.load(f)
    colors = {c["id"]: c["color"] for c in panoptic["categories"]}
    things = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    tiles = []
    for annotation in panoptic["annotations"][:count]:
        image = np.asarray(
            Image.open(os.path.join(paths.image_root, annotation["file_name"][:-4] + ".jpg"))
        )
        ids = rgb2id(
            np.asarray(Image.open(os.path.join(paths.panoptic_root, annotation["file_name"])))
        )
        painted = np.zeros_like(image)
        rng = np.random.default_rng(annotation["image_id"])
        for segment in annotation["segments_info"]:
            where = ids == segment["id"]
            if segment["category_id"] in things:
                painted[where] = rng.integers(40, 256, 3)
                edge = where & ~ndimage.binary_erosion(where)
                painted[edge] = 255
            else:
                painted[where] = colors[segment["category_id"]]
        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        tiles.append(np.concatenate([image, gap, painted], axis=1))
    if not tiles:
        raise ValueError(f"{paths.panoptic_json} has no images")
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    blank = np.full_like(tiles[0], 255)
    pad = np.full((tiles[0].shape[0], 8, 3), 255, np.uint8)
    lines = []
    for row in rows:
        row = row + [blank] * (columns - len(row))
        lines.append(np.concatenate([x for t in row for x in (t, pad)][:-1], axis=1))
        lines.append(np.full((8, lines[-1].shape[1], 3), 255, np.uint8))
    return Image.fromarray(np.concatenate(lines[:-1], axis=0))
