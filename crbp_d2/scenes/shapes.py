"""A small synthetic dataset in the exact COCO panoptic format, so everything runs without COCO.

Each image shows 2-3 textured background regions ("stuff": sky, grass, wall) separated by wavy
borders, with 2-5 shapes on top ("things": circle, square, triangle, star) that may occlude each
other. Some images also hold a crowd region (a cluster of small shapes of one class annotated as
one ``iscrowd`` segment), and about half leave a thin VOID band along the stuff borders.

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

import colorsys
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image
from scipy import ndimage

from ..utils.procs import die_with_parent, pool_initargs
from .panoptic import id2rgb, rgb2id, write_separated_semantic

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

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
SPLITS: Tuple[str, ...] = ("train", "val")
_NAMES = {c["id"]: c["name"] for c in CATEGORIES}

DEFAULT_NUM_TRAIN = 64
DEFAULT_NUM_VAL = 16
DEFAULT_IMAGE_SIZE = 160
DEFAULT_SEED = 0
GENERATOR_VERSION = 1
MANIFEST_NAME = "generation.json"

_IMAGE_ID_OFFSET = {"train": 0, "val": 1_000_000}
_MAX_IMAGES_PER_SPLIT = 999_999
_CROWD_PROBABILITY = 0.2
_VOID_BAND_PROBABILITY = 0.5
_PLACEMENT_ATTEMPTS = 30
_MIN_VISIBLE_FRACTION = 0.35  # an occluded thing keeps at least this share of its shape ...
_MIN_VISIBLE_PIXELS = 40  # ... and at least this many pixels
_MIN_COMPONENT_PIXELS = 12  # every visible piece is at least this big (valid polygons)
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


_GENERATION_KEYS = ("num_train", "num_val", "image_size", "seed")


def _check_manifest(root: Path, scene: SyntheticScene, generation: Dict[str, Any]) -> None:
    with open(root / MANIFEST_NAME) as f:
        manifest = json.load(f)
    if manifest.get("scene", SHAPES_SCENE.name) != scene.name:
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


# ----------------------------------------------------------------------------------------------
# Rendering one sample


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
