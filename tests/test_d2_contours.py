"""The synthetic "contours" panoptic set: determinism, valid annotations, real crossings."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2")

from crbp_d2.rfpn.data import (  # noqa: E402
    CONTOUR_CATEGORIES,
    CONTOURS_SCENE,
    SYNTHETIC_CONTOURS_DATASETS,
    UnknownDatasetError,
    check_dataset_name,
    contact_sheet,
    ensure_synthetic_dataset,
    make_synthetic_dataset,
    register_synthetic_panoptic,
    rgb2id,
    split_paths,
)
from crbp_d2.rfpn.evaluation import pq_compute  # noqa: E402

import pycocotools.mask as mask_util  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from crbp_d2.scenes.contours import CONTOUR_DEFAULTS  # noqa: E402

SMALL = dict(num_train=12, num_val=4, image_size=128, seed=5)
CONTOUR_ID = next(c["id"] for c in CONTOUR_CATEGORIES if c["name"] == "contour")


@pytest.fixture(scope="module")
def contours_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(CONTOURS_SCENE, tmp_path_factory.mktemp("c") / "set", **SMALL)


def _digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _panoptic(root: Path, split: str):
    paths = split_paths(root, split)
    with open(paths.panoptic_json) as f:
        data = json.load(f)
    for annotation in data["annotations"]:
        png = Image.open(Path(paths.panoptic_root) / annotation["file_name"])
        yield annotation, rgb2id(np.asarray(png))


def test_generation_is_byte_identical_for_a_seed(tmp_path, contours_root):
    again = make_synthetic_dataset(CONTOURS_SCENE, tmp_path / "again", **SMALL)
    assert _digest(again) == _digest(contours_root)
    other = make_synthetic_dataset(CONTOURS_SCENE, tmp_path / "other", **dict(SMALL, seed=6))
    assert _digest(other) != _digest(contours_root)


def test_instance_annotations_match_the_panoptic_segments(contours_root):
    """pycocotools reads the (RLE) masks back exactly as the panoptic segment of each thing."""
    paths = split_paths(contours_root, "train")
    coco = COCO(paths.instances_json)
    segments = {}
    for annotation, ids in _panoptic(contours_root, "train"):
        for info in annotation["segments_info"]:
            segments[(annotation["image_id"], info["bbox"][0], info["bbox"][1])] = ids == info["id"]
    assert len(coco.getAnnIds()) >= 3 * SMALL["num_train"]
    for ann in coco.loadAnns(coco.getAnnIds()):
        decoded = coco.annToMask(ann).astype(bool)
        truth = segments[(ann["image_id"], int(ann["bbox"][0]), int(ann["bbox"][1]))]
        np.testing.assert_array_equal(decoded, truth)
        assert ann["area"] == truth.sum()
        rle = mask_util.encode(np.asfortranarray(truth.astype(np.uint8)))
        assert list(mask_util.toBbox(rle)) == ann["bbox"]


def test_ground_truth_scores_pq_100_with_the_pq_evaluator(contours_root):
    paths = split_paths(contours_root, "val")
    with open(paths.panoptic_json) as f:
        predictions = json.load(f)
    result = pq_compute(paths.panoptic_json, predictions, paths.panoptic_root, paths.panoptic_root)
    assert result["All"]["pq"] == pytest.approx(1.0)
    assert result["Things"]["n"] == 2 and result["Stuff"]["n"] == 3


def test_contours_cross_and_are_at_least_one_roi_cell_wide(contours_root):
    """Most contour boxes hold pixels of other things (the head must trace to cut its own
    instance out), and every contour is at least one 14x14 RoI cell of its box wide."""
    width = CONTOUR_DEFAULTS["contour_width"]
    contours = crossing = 0
    for annotation, ids in _panoptic(contours_root, "train"):
        thing_ids = [s["id"] for s in annotation["segments_info"] if s["category_id"] <= 2]
        for info in annotation["segments_info"]:
            if info["category_id"] != CONTOUR_ID:
                continue
            x, y, w, h = info["bbox"]
            contours += 1
            others = [i for i in thing_ids if i != info["id"]]
            crossing += bool(np.isin(ids[y : y + h, x : x + w], others).any())
            assert max(w, h) / 14 <= width, info
    assert contours >= 3 * SMALL["num_train"]
    assert crossing / contours >= 0.6, (crossing, contours)


def test_contact_sheet_shows_images_and_segments(contours_root):
    sheet = contact_sheet(contours_root, "train", count=6, columns=3)
    size = SMALL["image_size"]
    assert sheet.size == (3 * (2 * size + 4) + 2 * 8, 2 * size + 8)


def test_a_contour_that_cannot_fit_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="contour_length=40 .* does not fit a 64-px image"):
        make_synthetic_dataset(CONTOURS_SCENE, tmp_path / "x", image_size=64, contour_length=40)
    with pytest.raises(ValueError, match="contour_width=1 px"):
        make_synthetic_dataset(CONTOURS_SCENE, tmp_path / "y", contour_width=1)
    with pytest.raises(TypeError, match="unknown contours generation parameter"):
        make_synthetic_dataset(CONTOURS_SCENE, tmp_path / "z", contour_lenght=9)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_registered_names_generate_on_first_use(tmp_path, contours_root):
    assert set(SYNTHETIC_CONTOURS_DATASETS) == {
        "synthetic_contours_train",
        "synthetic_contours_val",
    }
    assert "synthetic_contours_train_separated" in DatasetCatalog.list()
    metadata = MetadataCatalog.get("synthetic_contours_val_separated")
    assert metadata.thing_classes == ["contour", "disk"]
    assert metadata.stuff_classes == ["things", "sky", "grass", "wall"]
    name = "test_contours_tmp"
    register_synthetic_panoptic(name, tmp_path / "lazy", "val", CONTOURS_SCENE, **SMALL)
    dicts = DatasetCatalog.get(name + "_separated")
    assert len(dicts) == SMALL["num_val"] and (tmp_path / "lazy").is_dir()
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1}
    # a folder holding the other scene is not silently used
    with pytest.raises(ValueError, match="holds a synthetic 'contours' dataset, not 'shapes'"):
        from crbp_d2.rfpn.data import SHAPES_SCENE

        ensure_synthetic_dataset(SHAPES_SCENE, contours_root)
    with pytest.raises(UnknownDatasetError, match="did you mean 'synthetic_contours_val"):
        check_dataset_name("synthetic_contour_val_separated")


def test_training_on_contours_needs_the_bitmask_mask_format():
    from crbp_d2.rfpn.data import check_mask_format

    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("synthetic_contours_train_separated",)
    with pytest.raises(ValueError, match="stores its instance masks as RLE: set INPUT.MASK_FORMAT"):
        check_mask_format(cfg)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    check_mask_format(cfg)
    cfg.INPUT.MASK_FORMAT = "polygon"
    cfg.DATASETS.TRAIN = ("synthetic_panoptic_train_separated",)
    check_mask_format(cfg)
