"""The synthetic COCO-panoptic dataset, its Detectron2 registration and the data scripts."""

import hashlib
import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2")

from crbp_d2.rfpn.data import (  # noqa: E402
    CATEGORIES,
    STUFF_CATEGORIES,
    SYNTHETIC_PANOPTIC_LARGE_GENERATION,
    THING_CATEGORIES,
    UnknownDatasetError,
    check_dataset_names,
    check_num_classes,
    ensure_synthetic_panoptic,
    id2rgb,
    make_synthetic_panoptic,
    read_panoptic_png,
    register_all_synthetic,
    register_synthetic_panoptic,
    rgb2id,
    separated_stuff_label_map,
    split_paths,
    synthetic_panoptic_metadata,
)

import pycocotools.mask as mask_util  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_panoptic_separated  # noqa: E402
from detectron2.data.datasets.builtin_meta import (  # noqa: E402
    COCO_CATEGORIES,
    _get_builtin_metadata,
)
from PIL import Image  # noqa: E402

from crbp_d2.scenes import writer as synthetic_panoptic  # noqa: E402
from crbp_d2.scenes.shapes import SHAPES_SCENE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_train=10, num_val=4, image_size=96, seed=1)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return make_synthetic_panoptic(tmp_path_factory.mktemp("data") / "synthetic", **SMALL)


# ----------------------------------------------------------------------------------------------
# Format helpers


def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 255], [256, 65535, 256**3 - 1]], np.uint32)
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[1, 0].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    with pytest.raises(ValueError, match="segment ids must lie in"):
        id2rgb(np.array([[256**3]]))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rgb2id(np.zeros((4, 4)))


def test_separated_labels_match_detectron2_coco_metadata():
    """The project's separation gives COCO the stuff labels Detectron2's builtin metadata uses."""
    label_map = separated_stuff_label_map(COCO_CATEGORIES)
    builtin = _get_builtin_metadata("coco_panoptic_separated")["stuff_dataset_id_to_contiguous_id"]
    stuff = {k: v for k, v in label_map.items() if v != 0}
    assert stuff == {k: v for k, v in builtin.items() if k != 0}
    assert all(label_map[c["id"]] == 0 for c in COCO_CATEGORIES if c["isthing"])


# ----------------------------------------------------------------------------------------------
# Generation


def test_generation_is_deterministic(tmp_path, small_root):
    again = make_synthetic_panoptic(tmp_path / "again", **SMALL)
    assert _tree_digest(again) == _tree_digest(small_root)
    other_seed = make_synthetic_panoptic(tmp_path / "other", **dict(SMALL, seed=2))
    assert _tree_digest(other_seed) != _tree_digest(small_root)


def test_generation_in_worker_processes_writes_the_same_bytes(tmp_path, small_root, monkeypatch):
    """Images are rendered in worker processes in tasks of a few images; the folder (images,
    PNGs, annotation ids) is the one a single process writes."""
    monkeypatch.setattr(synthetic_panoptic, "_IMAGES_PER_TASK", 3)  # 10 train images: 4 tasks
    pooled = synthetic_panoptic.make_synthetic_dataset(
        SHAPES_SCENE, tmp_path / "pooled", workers=2, **SMALL
    )
    assert _tree_digest(pooled) == _tree_digest(small_root)
    single = synthetic_panoptic.make_synthetic_dataset(
        SHAPES_SCENE, tmp_path / "single", workers=1, **SMALL
    )
    assert _tree_digest(single) == _tree_digest(small_root)
    instances = json.loads(Path(split_paths(pooled, "train").instances_json).read_text())
    assert [a["id"] for a in instances["annotations"]] == list(
        range(1, len(instances["annotations"]) + 1)
    )
    image_ids = [a["image_id"] for a in instances["annotations"]]
    assert image_ids == sorted(image_ids) and len(set(image_ids)) == SMALL["num_train"]


def test_files_are_consistent(small_root):
    label_map = {c["id"]: 0 for c in THING_CATEGORIES}
    label_map.update({c["id"]: i + 1 for i, c in enumerate(STUFF_CATEGORIES)})
    thing_ids = {c["id"] for c in THING_CATEGORIES}
    saw = {"crowd": 0, "void": 0}
    for split in ("train", "val"):
        paths = split_paths(small_root, split)
        panoptic = json.loads(Path(paths.panoptic_json).read_text())
        instances = json.loads(Path(paths.instances_json).read_text())
        assert panoptic["categories"] == list(CATEGORIES)
        assert [c["id"] for c in instances["categories"]] == [c["id"] for c in THING_CATEGORIES]
        assert len(panoptic["images"]) == SMALL[f"num_{split}"] == len(panoptic["annotations"])
        instances_by_image = {}
        for annotation in instances["annotations"]:
            instances_by_image.setdefault(annotation["image_id"], []).append(annotation)

        for image, annotation in zip(panoptic["images"], panoptic["annotations"]):
            stem = Path(image["file_name"]).stem
            assert annotation["file_name"] == stem + ".png"
            with Image.open(Path(paths.image_root) / image["file_name"]) as rgb:
                assert rgb.size == (image["width"], image["height"]) and rgb.mode == "RGB"
            ids = read_panoptic_png(Path(paths.panoptic_root) / annotation["file_name"])
            semantic = np.asarray(Image.open(Path(paths.sem_seg_root) / annotation["file_name"]))

            segments = annotation["segments_info"]
            assert set(np.unique(ids)) - {0} == {s["id"] for s in segments}
            expected_semantic = np.full(ids.shape, 255)
            for s in segments:
                mask = ids == s["id"]
                ys, xs = np.nonzero(mask)
                assert s["area"] == mask.sum()
                assert s["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
                expected_semantic[mask] = label_map[s["category_id"]]
            np.testing.assert_array_equal(semantic, expected_semantic)
            saw["void"] += int((ids == 0).any())

            things = [s for s in segments if s["category_id"] in thing_ids]
            objects = instances_by_image.get(image["id"], [])
            assert len(objects) == len(things)
            for s, obj in zip(things, objects):
                assert (obj["category_id"], obj["iscrowd"]) == (s["category_id"], s["iscrowd"])
                assert obj["bbox"] == s["bbox"] and obj["area"] == s["area"]
                h, w = ids.shape
                if obj["iscrowd"]:
                    saw["crowd"] += 1
                    decoded = mask_util.decode(obj["segmentation"]).astype(bool)
                    np.testing.assert_array_equal(decoded, ids == s["id"])
                else:
                    assert all(len(p) >= 6 for p in obj["segmentation"])
                    rle = mask_util.merge(mask_util.frPyObjects(obj["segmentation"], h, w))
                    polygon = mask_util.decode(rle).astype(bool)
                    mask = ids == s["id"]
                    assert (polygon & mask).sum() / (polygon | mask).sum() > 0.6
    assert saw["crowd"] > 0 and saw["void"] > 0


def test_bad_generation_arguments(tmp_path, small_root):
    with pytest.raises(ValueError, match="num_train"):
        make_synthetic_panoptic(tmp_path / "x", num_train=0)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_panoptic(tmp_path / "x", image_size=8)
    with pytest.raises(TypeError, match="num_val"):
        make_synthetic_panoptic(tmp_path / "x", num_val=2.5)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_panoptic(small_root, **SMALL)
    assert not (tmp_path / "x").exists()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_panoptic, "write_separated_semantic", fail)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_panoptic(tmp_path / "synthetic", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_generation_agrees_on_one_copy(tmp_path):
    root, errors = tmp_path / "synthetic", []

    def generate():
        try:
            make_synthetic_panoptic(root, **dict(SMALL, num_train=2, num_val=1))
        except FileExistsError as e:
            errors.append(e)

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]
    assert synthetic_panoptic.is_complete(root)
    assert ensure_synthetic_panoptic(root) == root  # a finished copy is used as is


def test_incomplete_folder_is_a_clear_error(tmp_path):
    (tmp_path / "synthetic").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete synthetic panoptic dataset"):
        ensure_synthetic_panoptic(tmp_path / "synthetic")


def test_ensure_checks_the_generation_parameters(tmp_path, small_root):
    """A dataset generated with other parameters is an error, not silently used; a larger copy
    starts with the images of the smaller one (each image depends on seed, split and index)."""
    assert ensure_synthetic_panoptic(small_root, **SMALL) == small_root
    with pytest.raises(ValueError, match="num_train=10 \\(wanted 12\\)"):
        ensure_synthetic_panoptic(small_root, **dict(SMALL, num_train=12))
    with pytest.raises(TypeError, match="unknown generation parameter"):
        ensure_synthetic_panoptic(small_root, size=96)
    larger = ensure_synthetic_panoptic(tmp_path / "larger", **dict(SMALL, num_train=12))
    for split in ("train", "val"):
        small, large = split_paths(small_root, split), split_paths(larger, split)
        for folder in ("image_root", "panoptic_root", "sem_seg_root"):
            files = sorted(Path(getattr(small, folder)).iterdir())
            for f in files:
                assert f.read_bytes() == (Path(getattr(large, folder)) / f.name).read_bytes()


# ----------------------------------------------------------------------------------------------
# Registration


def test_builtin_names_and_metadata():
    register_all_synthetic()  # a second registration is a no-op
    for split in ("train", "val"):
        name = f"synthetic_panoptic_{split}_separated"
        assert name in DatasetCatalog.list()
        metadata = MetadataCatalog.get(name)
        assert metadata.evaluator_type == "coco_panoptic_seg"
        assert metadata.ignore_label == 255
        assert metadata.thing_classes == ["circle", "square", "triangle", "star"]
        assert metadata.stuff_classes == ["things", "sky", "grass", "wall"]
        assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
        assert metadata.stuff_dataset_id_to_contiguous_id == {0: 0, 5: 1, 6: 2, 7: 3}
        assert len(metadata.thing_colors) == 4 and len(metadata.stuff_colors) == 4
        for key in ("panoptic_root", "panoptic_json", "json_file", "sem_seg_root", "image_root"):
            assert split in Path(getattr(metadata, key)).name
        assert f"synthetic_panoptic_{split}_stuffonly" in DatasetCatalog.list()
        large = MetadataCatalog.get(f"synthetic_panoptic_large_{split}_separated")
        assert large.thing_classes == metadata.thing_classes
        assert large.stuff_classes == metadata.stuff_classes
        assert Path(large.synthetic_root).name == Path(metadata.synthetic_root).name + "_large"
    assert SYNTHETIC_PANOPTIC_LARGE_GENERATION["num_train"] > synthetic_panoptic.DEFAULT_NUM_TRAIN


def test_lazy_generation_and_dataset_dicts(tmp_path):
    root = tmp_path / "datasets" / "synthetic_panoptic"
    names = register_synthetic_panoptic("test_lazy_synthetic_val", root, "val")
    try:
        assert not root.exists()  # registering generates nothing
        dicts = DatasetCatalog.get(names[0])
        assert synthetic_panoptic.is_complete(root)
        assert len(dicts) == synthetic_panoptic.DEFAULT_NUM_VAL
        for record in dicts:
            assert {"file_name", "image_id", "height", "width", "sem_seg_file_name"} <= set(record)
            assert Path(record["file_name"]).is_file()
            assert Path(record["sem_seg_file_name"]).is_file()
            for obj in record["annotations"]:
                assert {"bbox", "bbox_mode", "segmentation", "category_id", "iscrowd"} <= set(obj)
                assert 0 <= obj["category_id"] < len(THING_CATEGORIES)
        assert sum(len(r["annotations"]) for r in dicts) > len(dicts)
        stuff_only = DatasetCatalog.get(names[1])
        assert [r["file_name"] for r in stuff_only] == sorted(r["file_name"] for r in dicts)

        # Detectron2's own mapper reads a record (polygon masks and the semantic PNG)
        cfg = get_cfg()
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 256
        cfg.MODEL.MASK_ON = True
        sample = DatasetMapper(cfg, is_train=True)(dicts[0])
        assert sample["image"].shape[1:] == sample["sem_seg"].shape
        assert len(sample["instances"]) == sum(not a["iscrowd"] for a in dicts[0]["annotations"])
        assert sample["instances"].has("gt_masks")
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_unknown_dataset_name_is_one_clear_error():
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("synthetic_panoptic_train_separated",)
    cfg.DATASETS.TEST = ("synthetic_panoptic_vall_separated", "no_such_dataset")
    with pytest.raises(UnknownDatasetError) as error:
        check_dataset_names(cfg)
    message = str(error.value)
    assert isinstance(error.value, KeyError)
    assert "cfg.DATASETS.TEST" in message and "'no_such_dataset'" in message
    assert "did you mean 'synthetic_panoptic_val_separated'" in message
    assert "coco_2017_train_panoptic_separated" in message  # lists what is registered
    with pytest.raises(KeyError, match="not registered"):
        DatasetCatalog.get("no_such_dataset")  # Detectron2's own error stays as it is

    cfg.DATASETS.TEST = "synthetic_panoptic_val_separated"
    with pytest.raises(TypeError, match="must be a list/tuple"):
        check_dataset_names(cfg)


def test_num_classes_check():
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("synthetic_panoptic_train_separated",)
    cfg.DATASETS.TEST = ()
    metadata = synthetic_panoptic_metadata()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(metadata["thing_classes"])
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(metadata["stuff_classes"])
    check_num_classes(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54
    with pytest.raises(ValueError, match="SEM_SEG_HEAD.NUM_CLASSES is 54 .* 4 stuff_classes"):
        check_num_classes(cfg)


# ----------------------------------------------------------------------------------------------
# Scripts under datasets/


def test_prepare_panoptic_fpn_script_reproduces_the_semantic_pngs(tmp_path, small_root, capsys):
    """Laid out as COCO, the synthetic val split gives the same PNGs as the generator wrote."""
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    paths = split_paths(small_root, "val")
    (coco / "annotations" / "panoptic_val2017.json").write_bytes(
        Path(paths.panoptic_json).read_bytes()
    )
    (coco / "panoptic_val2017").symlink_to(paths.panoptic_root)
    script = _load_script("prepare_panoptic_fpn")
    assert script.main(["--root", str(coco), "--splits", "val2017", "--workers", "1"]) == 0
    written = _tree_digest(coco / "panoptic_stuff_val2017")
    assert written and written == _tree_digest(Path(paths.sem_seg_root))
    assert script.main(["--root", str(coco), "--splits", "train2017"]) == 2  # missing: error
    # a val-only download prepared with the default splits: the error names --splits
    capsys.readouterr()
    assert script.main(["--root", str(coco), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "panoptic_train2017.json not found (split train2017)" in err
    assert "--splits val2017" in err


def test_make_synthetic_panoptic_script(tmp_path, capsys):
    script = _load_script("make_synthetic_panoptic")
    out = tmp_path / "synthetic"
    args = ["--out", str(out), "--num-train", "2", "--num-val", "1", "--size", "64"]
    assert script.main(args) == 0 and synthetic_panoptic.is_complete(out)
    assert script.main(args) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert script.main(args + ["--force", "--seed", "3"]) == 0
    assert json.loads((out / "generation.json").read_text())["seed"] == 3
    assert script.main(["--out", str(tmp_path / "bad"), "--size", "10"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_missing_coco_files_name_what_to_do(tmp_path, monkeypatch):
    from crbp_d2.rfpn.data import check_dataset_files

    coco = tmp_path / "coco"
    for folder in ("val2017", "panoptic_val2017", "annotations"):
        (coco / folder).mkdir(parents=True)
    for name in ("panoptic_val2017.json", "instances_val2017.json"):
        (coco / "annotations" / name).write_text("{}")
    name = "test_coco_val_panoptic"
    register_coco_panoptic_separated(
        name,
        {},
        str(coco / "val2017"),
        str(coco / "panoptic_val2017"),
        str(coco / "annotations" / "panoptic_val2017.json"),
        str(coco / "panoptic_stuff_val2017"),
        str(coco / "annotations" / "instances_val2017.json"),
    )
    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), (name + "_separated",)
    with pytest.raises(FileNotFoundError, match="prepare_panoptic_fpn.py --splits val2017"):
        check_dataset_files(cfg)
    (coco / "panoptic_stuff_val2017").mkdir()
    check_dataset_files(cfg)
    (coco / "val2017").rmdir()
    with pytest.raises(FileNotFoundError, match=r"val2017 not found: .*\(image_root\)"):
        check_dataset_files(cfg)
    cfg.DATASETS.TEST = ("synthetic_panoptic_val_separated",)  # generated on first use: fine
    check_dataset_files(cfg)
