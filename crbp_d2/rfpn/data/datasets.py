"""Dataset registration for Detectron2, and checks of the dataset names a config uses.

Registers the synthetic panoptic dataset as Detectron2 "separated" COCO panoptic datasets (the
format Panoptic FPN trains on), under the names in :data:`SYNTHETIC_PANOPTIC_DATASETS`:

* ``synthetic_panoptic_train_separated`` / ``synthetic_panoptic_val_separated``: instances +
  semantic annotations, ``evaluator_type="coco_panoptic_seg"``;
* ``synthetic_panoptic_train_stuffonly`` / ``synthetic_panoptic_val_stuffonly``: semantic only;
* the same four names with ``synthetic_panoptic_large_`` for ``synthetic_panoptic_``: the larger
  copy in ``synthetic_panoptic_large/`` (:data:`SYNTHETIC_PANOPTIC_LARGE_GENERATION`), for the
  quick recipes that train from random init (64 images are far too few for detection);
* ``synthetic_contours_{train,val}_{separated,stuffonly}``: the "contours" set
  (:mod:`crbp_d2.scenes.contours`, :data:`SYNTHETIC_CONTOURS_GENERATION`), crossing
  Pathfinder contours where the mask head has to trace.

The files are generated on the first ``DatasetCatalog.get`` of one of these names (not at import).
COCO itself (``coco_2017_{train,val}_panoptic_separated``) is registered by Detectron2; see
``datasets/README.md`` for its layout.
"""

import difflib
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic_separated

from ...scenes.contours import CONTOURS_SCENE
from ...scenes.panoptic import SEMANTIC_THINGS_LABEL, separated_stuff_label_map
from ...scenes.shapes import SHAPES_SCENE
from ...scenes.writer import (
    PathLike,
    SyntheticScene,
    default_synthetic_root,
    ensure_synthetic_dataset,
    split_paths,
)

__all__ = [
    "SYNTHETIC_PANOPTIC_DATASETS",
    "SYNTHETIC_PANOPTIC_LARGE_DATASETS",
    "SYNTHETIC_PANOPTIC_LARGE_GENERATION",
    "SYNTHETIC_CONTOURS_DATASETS",
    "SYNTHETIC_CONTOURS_GENERATION",
    "synthetic_panoptic_metadata",
    "register_synthetic_panoptic",
    "register_all_synthetic",
    "prepare_dataset_files",
    "UnknownDatasetError",
    "check_dataset_name",
    "check_dataset_names",
    "check_dataset_files",
    "check_mask_format",
    "check_num_classes",
]

SYNTHETIC_PANOPTIC_DATASETS: Dict[str, str] = {
    "synthetic_panoptic_train": "train",
    "synthetic_panoptic_val": "val",
}
"""Base name -> split. Detectron2 appends ``_separated`` / ``_stuffonly`` to the base names."""

SYNTHETIC_PANOPTIC_LARGE_DATASETS: Dict[str, str] = {
    "synthetic_panoptic_large_train": "train",
    "synthetic_panoptic_large_val": "val",
}
"""Base name -> split of the larger copy (folder ``synthetic_panoptic_large``, beside the default
one)."""

SYNTHETIC_PANOPTIC_LARGE_GENERATION: Dict[str, int] = {
    "num_train": 4096,
    "num_val": 128,
    "image_size": 160,
    "seed": 0,
}
"""Parameters of the larger copy. With the default seed and size its first 64 train / 16 val
images are those of the default dataset (each image depends only on seed, split and index)."""

SYNTHETIC_CONTOURS_DATASETS: Dict[str, str] = {
    "synthetic_contours_train": "train",
    "synthetic_contours_val": "val",
}
"""Base name -> split of the contours set (folder ``synthetic_contours``)."""

SYNTHETIC_CONTOURS_GENERATION: Dict[str, int] = {
    "num_train": 2048,
    "num_val": 128,
    "image_size": 160,
    "seed": 0,
}
"""Parameters of the contours set (its scene parameters are the defaults of
:data:`crbp_d2.scenes.contours.CONTOUR_DEFAULTS`)."""

_THINGS_COLOR = [82, 18, 128]  # colour of the merged "things" label in the semantic head

# registered dataset name -> function that makes its files exist (lazy generation)
_FILE_PREPARERS: Dict[str, Callable[[], object]] = {}


def synthetic_panoptic_metadata(scene: SyntheticScene = SHAPES_SCENE) -> Dict:
    """Detectron2 metadata of a synthetic "separated" dataset (same keys as COCO's builtin).

    ``thing_*`` describe the instance classes (contiguous ids ``0..#things-1``); ``stuff_*``
    describe the semantic-head classes: label 0 is "things", stuff classes are ``1..#stuff``.
    """
    things, stuff = scene.thing_categories, scene.stuff_categories
    stuff_label = separated_stuff_label_map(scene.categories)
    stuff_dataset_id_to_contiguous_id = {c["id"]: stuff_label[c["id"]] for c in stuff}
    stuff_dataset_id_to_contiguous_id[0] = SEMANTIC_THINGS_LABEL
    stuff_by_label = sorted(stuff, key=lambda c: stuff_label[c["id"]])
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [list(c["color"]) for c in things],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: index for index, c in enumerate(sorted(things, key=lambda c: c["id"]))
        },
        "stuff_classes": ["things"] + [c["name"] for c in stuff_by_label],
        "stuff_colors": [_THINGS_COLOR] + [list(c["color"]) for c in stuff_by_label],
        "stuff_dataset_id_to_contiguous_id": stuff_dataset_id_to_contiguous_id,
    }


def register_synthetic_panoptic(
    name: str, root: PathLike, split: str, scene: SyntheticScene = SHAPES_SCENE, **generation: int
) -> List[str]:
    """Register the synthetic ``split`` of ``scene`` under ``root`` as ``name + "_separated"``
    and ``name + "_stuffonly"``; the files are generated on the first ``DatasetCatalog.get``, with
    ``generation`` (keyword arguments of ``make_synthetic_dataset``; defaults where not given).

    Returns:
        The registered dataset names.
    """
    root = Path(root)
    paths = split_paths(root, split)
    register_coco_panoptic_separated(
        name,
        synthetic_panoptic_metadata(scene),
        paths.image_root,
        paths.panoptic_root,
        paths.panoptic_json,
        paths.sem_seg_root,
        paths.instances_json,
    )

    def prepare_files() -> Path:
        return ensure_synthetic_dataset(scene, root, **generation)

    registered = [name + "_separated", name + "_stuffonly"]
    for dataset_name in registered:
        load = DatasetCatalog[dataset_name]  # Detectron2's loader, wrapped to generate first
        DatasetCatalog.remove(dataset_name)
        DatasetCatalog.register(dataset_name, _generate_then_load(prepare_files, load))
        MetadataCatalog.get(dataset_name).set(
            synthetic_root=os.fspath(root), instance_masks=scene.instance_masks
        )
        _FILE_PREPARERS[dataset_name] = prepare_files
    return registered


def _generate_then_load(prepare_files: Callable[[], object], load: Callable[[], List[Dict]]):
    def generate_then_load() -> List[Dict]:
        prepare_files()
        return load()

    return generate_then_load


def register_all_synthetic(root: Optional[PathLike] = None) -> None:
    """Register every name of :data:`SYNTHETIC_PANOPTIC_DATASETS`,
    :data:`SYNTHETIC_PANOPTIC_LARGE_DATASETS` and :data:`SYNTHETIC_CONTOURS_DATASETS` (once;
    later calls do nothing).

    Args:
        root: dataset folder; default ``$DETECTRON2_DATASETS/synthetic_panoptic``, or the
            repository's ``datasets/synthetic_panoptic``. The larger copy goes into its sibling
            ``synthetic_panoptic_large``, the contours set into ``synthetic_contours``.
    """
    root = Path(root) if root is not None else default_synthetic_root()
    large_root = root.with_name(root.name + "_large")
    for name, split in SYNTHETIC_PANOPTIC_DATASETS.items():
        if name + "_separated" not in DatasetCatalog:
            register_synthetic_panoptic(name, root, split)
    for name, split in SYNTHETIC_PANOPTIC_LARGE_DATASETS.items():
        if name + "_separated" not in DatasetCatalog:
            register_synthetic_panoptic(
                name, large_root, split, **SYNTHETIC_PANOPTIC_LARGE_GENERATION
            )
    contours_root = root.with_name("synthetic_contours")
    for name, split in SYNTHETIC_CONTOURS_DATASETS.items():
        if name + "_separated" not in DatasetCatalog:
            register_synthetic_panoptic(
                name, contours_root, split, CONTOURS_SCENE, **SYNTHETIC_CONTOURS_GENERATION
            )


def prepare_dataset_files(dataset_name: str) -> None:
    """Generate the files of a lazily generated dataset (no-op for other datasets)."""
    preparer = _FILE_PREPARERS.get(dataset_name)
    if preparer is not None:
        preparer()


class UnknownDatasetError(KeyError):
    """A dataset name that is not registered in Detectron2's ``DatasetCatalog``."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def _unknown_dataset_message(unknown: Sequence[str], where: str) -> str:
    available = sorted(DatasetCatalog.list())
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        if close:
            hints.append(f"For {name!r} did you mean {' or '.join(repr(c) for c in close)}?")
    panoptic = [n for n in available if n.endswith("_panoptic_separated") or n in _FILE_PREPARERS]
    return (
        f"Unknown dataset name(s) in {where}: {', '.join(repr(n) for n in unknown)}. "
        + (" ".join(hints) + " " if hints else "")
        + f"Panoptic FPN datasets: {', '.join(panoptic)}. "
        + f"All registered datasets: {', '.join(available)}. "
        + "(Importing crbp_d2.rfpn.data registers the synthetic ones; register your own with "
        + "detectron2.data.datasets.register_coco_panoptic_separated.)"
    )


def check_dataset_name(name: str, where: str = "dataset_name") -> None:
    """Raise :class:`UnknownDatasetError` (a ``KeyError``) if ``name`` is not registered."""
    if name not in DatasetCatalog:
        raise UnknownDatasetError(_unknown_dataset_message([name], where))


def check_dataset_names(cfg: CfgNode) -> None:
    """Raise one :class:`UnknownDatasetError` (a ``KeyError``) naming every dataset of
    ``cfg.DATASETS.TRAIN``/``TEST`` that is not registered, with close matches and the list of
    registered names."""
    for field in ("TRAIN", "TEST"):
        names = cfg.DATASETS.get(field, ())
        if isinstance(names, str):
            raise TypeError(
                f"cfg.DATASETS.{field} must be a list/tuple of dataset names, got the string "
                f"{names!r}; write ({names!r},)"
            )
        unknown = [name for name in names if name not in DatasetCatalog]
        if unknown:
            raise UnknownDatasetError(_unknown_dataset_message(unknown, f"cfg.DATASETS.{field}"))


def check_dataset_files(cfg: CfgNode, splits: Sequence[str] = ("TRAIN", "TEST")) -> None:
    """Raise ``FileNotFoundError`` (one line saying what to do) if a dataset of
    ``cfg.DATASETS.<split>`` (``splits``: ``("TEST",)`` for an evaluation, which does not read the
    training data) misses its files: COCO's separated semantic PNGs (made by
    ``datasets/prepare_panoptic_fpn.py``), its images or annotations. The synthetic sets are
    skipped (they are generated on first use)."""
    for name in [n for split in splits for n in cfg.DATASETS[split]]:
        if name in _FILE_PREPARERS:
            continue
        metadata = MetadataCatalog.get(name)
        for field in ("image_root", "panoptic_json", "json_file", "panoptic_root"):
            path = metadata.get(field, None)
            if path and not os.path.exists(path):
                raise FileNotFoundError(
                    f"{path} not found: dataset {name!r} needs it ({field}); the datasets are "
                    f"under {os.path.abspath(os.environ.get('DETECTRON2_DATASETS', 'datasets'))} "
                    "($DETECTRON2_DATASETS, default ./datasets; layout: datasets/README.md)"
                )
        semantic = metadata.get("sem_seg_root", None)
        if semantic and metadata.get("panoptic_root", None) and not os.path.isdir(semantic):
            split = os.path.basename(semantic).replace("panoptic_stuff_", "")
            raise FileNotFoundError(
                f"{semantic} not found: dataset {name!r} needs the separated semantic PNGs; "
                f"make them with `python datasets/prepare_panoptic_fpn.py --splits {split}` "
                "(datasets/README.md)"
            )


def check_mask_format(cfg: CfgNode) -> None:
    """Raise ``ValueError`` if a training dataset stores its instance masks as RLE (the contours
    set: exact thin masks) while ``INPUT.MASK_FORMAT`` is ``polygon`` (Detectron2 would fail in
    its data loader)."""
    if cfg.INPUT.MASK_FORMAT == "bitmask":
        return
    for dataset_name in cfg.DATASETS.TRAIN:
        if MetadataCatalog.get(dataset_name).get("instance_masks") == "rle":
            raise ValueError(
                f"dataset {dataset_name!r} stores its instance masks as RLE: set "
                "INPUT.MASK_FORMAT bitmask (the configs/quick/*contours*.yaml configs do)"
            )


def check_num_classes(cfg: CfgNode, splits: Sequence[str] = ("TRAIN", "TEST")) -> None:
    """Raise ``ValueError`` if the class counts of the model heads do not match the metadata of
    the datasets in ``cfg.DATASETS.<split>`` (``ROI_HEADS.NUM_CLASSES`` vs ``thing_classes``,
    ``SEM_SEG_HEAD.NUM_CLASSES`` vs ``stuff_classes``)."""
    check_dataset_names(cfg)
    heads = (
        ("MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES, "thing_classes"),
        ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "stuff_classes"),
    )
    for dataset_name in [n for split in splits for n in cfg.DATASETS[split]]:
        metadata = MetadataCatalog.get(dataset_name)
        if metadata.get("evaluator_type") != "coco_panoptic_seg":
            continue
        for key, value, classes_field in heads:
            classes = metadata.get(classes_field)
            if classes is not None and value != len(classes):
                raise ValueError(
                    f"cfg.{key} is {value} but dataset {dataset_name!r} has {len(classes)} "
                    f"{classes_field} ({', '.join(classes)}); set {key} {len(classes)}"
                )
