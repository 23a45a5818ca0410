"""Masks on ground-truth boxes: mask IoU and boundary F-score per class, on hand-built cases."""

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from crbp_d2.rfpn.evaluation.gt_box import (  # noqa: E402
    boundary_f_score,
    build_gt_box_loader,
    evaluate_masks_on_gt_boxes,
    mask_iou,
)

import pycocotools.mask as mask_util  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import BoxMode, ImageList  # noqa: E402
from PIL import Image  # noqa: E402

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")


def _rectangle(shape, top, left, height, width) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + height, left : left + width] = True
    return mask


def test_mask_iou_and_boundary_f_score_by_hand():
    truth = _rectangle((10, 10), 2, 2, 4, 4)  # 16 px, boundary 12 px
    assert mask_iou(truth, truth) == 1.0 and boundary_f_score(truth, truth, 1) == 1.0
    half = _rectangle((10, 10), 2, 2, 4, 2)
    assert mask_iou(half, truth) == pytest.approx(8 / 16)
    # half's boundary is all 8 of its pixels, all within 1 px of the truth's boundary; of the
    # truth's 12 boundary pixels, 8 lie within 1 px of half's (not column 5 at all)
    assert boundary_f_score(half, truth, 1) == pytest.approx(2 * 1 * (8 / 12) / (1 + 8 / 12))
    shifted = _rectangle((10, 10), 2, 6, 4, 4)
    assert mask_iou(shifted, truth) == 0.0
    assert boundary_f_score(shifted, truth, 1) == pytest.approx(2 * (4 / 12) * (4 / 12) / (8 / 12))
    empty = np.zeros((10, 10), bool)
    assert boundary_f_score(empty, empty, 1) == 1.0 and boundary_f_score(empty, truth, 1) == 0.0


class _FullBoxRoIHeads(torch.nn.Module):
    def forward_with_given_boxes(self, features, instances):
        for inst in instances:
            inst.pred_masks = torch.ones(len(inst), 1, 28, 28)  # the whole given box
        return instances


class _FullBoxModel(torch.nn.Module):
    """Stands in for an R-CNN: no backbone features, a mask head that fills the given box."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__()
        self.roi_heads = _FullBoxRoIHeads()

    def preprocess_image(self, batch):
        return ImageList.from_tensors([b["image"].float() for b in batch])

    def backbone(self, tensor):
        return {}


@pytest.fixture
def hand_built_dataset(tmp_path):
    """One 64x64 image: a thing of class 'a' whose box is 40x20 px but whose mask fills only the
    box's left half (IoU of a full-box mask: 0.5), and a thing of class 'b' filling its box."""
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    masks = [_rectangle((64, 64), 8, 8, 20, 20), _rectangle((64, 64), 40, 30, 10, 16)]
    boxes = [[8, 8, 40, 20], [30, 40, 16, 10]]
    annotations = []
    for category, (mask, box) in enumerate(zip(masks, boxes)):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        annotations.append(
            {
                "bbox": box,
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": category,
                "segmentation": rle,
                "iscrowd": 0,
            }
        )
    name = f"gt_box_test_{tmp_path.name}"
    record = {"file_name": str(image), "height": 64, "width": 64, "image_id": 1}
    DatasetCatalog.register(name, lambda: [dict(record, annotations=annotations)])
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    DatasetCatalog.register(name + "_no_masks", lambda: [dict(record, annotations=[])])
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.DATALOADER.NUM_WORKERS = 0
    yield cfg, name
    for dataset in (name, name + "_no_masks"):
        DatasetCatalog.remove(dataset)


def test_full_box_masks_on_a_half_filled_box_score_iou_50(hand_built_dataset):
    cfg, name = hand_built_dataset
    result = evaluate_masks_on_gt_boxes(_FullBoxModel(), build_gt_box_loader(cfg, name), ["a", "b"])
    scores = result[0]
    assert scores["IoU-a"] == pytest.approx(50.0) and scores["IoU-b"] == pytest.approx(100.0)
    assert scores["mIoU"] == pytest.approx(75.0) and scores["instances"] == 2
    assert scores["BF-b"] == pytest.approx(100.0)
    # tolerance 1 px (0.008 x 90.5 px diagonal, rounded): the full box's boundary (116 px) and
    # the half box's (76 px) share the left side and half of the top and bottom (58 px); 2 more
    # pixels of each lie 1 px from the other's boundary
    precision, recall = 60 / 116, 60 / 76
    expected = 100 * 2 * precision * recall / (precision + recall)
    assert scores["BF-a"] == pytest.approx(expected)


def test_a_dataset_without_instance_masks_is_one_clear_error(hand_built_dataset):
    cfg, name = hand_built_dataset
    with pytest.raises(ValueError, match=f"dataset '{name}_no_masks' has no instance masks"):
        build_gt_box_loader(cfg, name + "_no_masks")
