"""PQ of the hotcoco-backed evaluator vs a small independent PQ implementation, and the full
evaluator stack (build_evaluator) fed with ground truth."""

import json
import math
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np
import pytest

pytest.importorskip("detectron2")

from crbp_d2.rfpn.data import (  # noqa: E402
    UnknownDatasetError,
    make_synthetic_panoptic,
    register_synthetic_panoptic,
)
from crbp_d2.rfpn.evaluation import HotcocoPanopticEvaluator, build_evaluator, pq_compute  # noqa: E402

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from helpers import ground_truth_outputs  # noqa: E402
from PIL import Image  # noqa: E402

from crbp_d2.scenes.panoptic import id2rgb  # noqa: E402

SIZE = 20
# things a (1), b (2); stuff s (3), t (4)
CATEGORIES = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
    {"id": 3, "name": "s", "isthing": 0},
    {"id": 4, "name": "t", "isthing": 0},
]
THING_TO_CONTIGUOUS = {1: 0, 2: 1}
STUFF_TO_CONTIGUOUS = {3: 1, 4: 2, 0: 0}  # "separated" style: 0 = things
IS_THING = {c["id"]: bool(c["isthing"]) for c in CATEGORIES}

Segments = Dict[int, Tuple[int, bool]]  # segment id -> (dataset category id, iscrowd)


# ----------------------------------------------------------------------------------------------
# Independent reference, written from the definition of PQ (Kirillov et al.) with COCO's rules.


def reference_pq(images: List[Tuple[np.ndarray, Segments, np.ndarray, Segments]]) -> Dict:
    """``images``: (gt ids, gt segments, pred ids, pred segments); id 0 = VOID."""
    tp, fp, fn = defaultdict(int), defaultdict(int), defaultdict(int)
    iou_sum = defaultdict(float)
    for gt_ids, gt_segments, pred_ids, pred_segments in images:
        void = gt_ids == 0
        matched_gt, matched_pred = set(), set()
        for g, (g_cat, g_crowd) in gt_segments.items():
            for p, (p_cat, _) in pred_segments.items():
                if g_crowd or g_cat != p_cat:
                    continue
                gm, pm = gt_ids == g, pred_ids == p
                inter = np.sum(gm & pm)
                union = np.sum(gm) + np.sum(pm) - inter - np.sum(pm & void)
                if inter > 0 and inter / union > 0.5:
                    tp[g_cat] += 1
                    iou_sum[g_cat] += inter / union
                    matched_gt.add(g)
                    matched_pred.add(p)
        for g, (g_cat, g_crowd) in gt_segments.items():
            if not g_crowd and g not in matched_gt:
                fn[g_cat] += 1
        for p, (p_cat, _) in pred_segments.items():
            if p in matched_pred:
                continue
            pm = pred_ids == p
            crowd_same_class = np.isin(
                gt_ids, [g for g, (c, crowd) in gt_segments.items() if crowd and c == p_cat]
            )
            ignored = np.sum(pm & void) + np.sum(pm & crowd_same_class)
            if ignored / np.sum(pm) <= 0.5:
                fp[p_cat] += 1

    results = {}
    for group, keep in (
        ("All", lambda c: True),
        ("Things", IS_THING.get),
        ("Stuff", lambda c: not IS_THING[c]),
    ):
        pq, sq, rq = [], [], []
        for cat in IS_THING:
            if not keep(cat) or tp[cat] + fp[cat] + fn[cat] == 0:
                continue
            denominator = tp[cat] + 0.5 * fp[cat] + 0.5 * fn[cat]
            pq.append(iou_sum[cat] / denominator)
            sq.append(iou_sum[cat] / tp[cat] if tp[cat] else 0.0)
            rq.append(tp[cat] / denominator)
        results[group] = {
            "pq": np.mean(pq) if pq else math.nan,
            "sq": np.mean(sq) if sq else math.nan,
            "rq": np.mean(rq) if rq else math.nan,
        }
    return results


# ----------------------------------------------------------------------------------------------
# Hand-built cases: (gt ids, gt segments, pred ids, pred segments)


def _canvas(stuff_split: int = 10) -> np.ndarray:
    """Stuff s (id 1) above row ``stuff_split``, stuff t (id 2) below."""
    ids = np.ones((SIZE, SIZE), np.int64)
    ids[stuff_split:] = 2
    return ids


def case_crowd():
    gt = _canvas()
    gt[2:6, 2:6] = 3  # thing a
    gt[12:18, 10:18] = 4  # crowd of a
    gt_segments = {1: (3, False), 2: (4, False), 3: (1, False), 4: (1, True)}
    pred = _canvas()
    pred[2:6, 2:6] = 3  # exact TP
    pred[12:18, 10:16] = 4  # class a inside the crowd of a: ignored, not FP
    pred[12:18, 16:18] = 5  # class b inside the crowd of a: FP
    pred_segments = {1: (3, False), 2: (4, False), 3: (1, False), 4: (1, False), 5: (2, False)}
    return gt, gt_segments, pred, pred_segments


def case_void():
    gt = _canvas()
    gt[9:11, :] = 0  # VOID band between the stuff regions
    gt[2:6, 2:6] = 3  # thing a, 16 px
    gt_segments = {1: (3, False), 2: (4, False), 3: (1, False)}
    pred = _canvas()
    pred[2:7, 2:6] = 3  # 4 extra px outside VOID ...
    pred[9:11, 2:8] = 3  # ... and 12 in VOID: IoU 16/20 with the VOID rule, 16/32 without
    pred[9:11, 10:18] = 5  # a segment entirely in VOID: not FP
    pred_segments = {1: (3, False), 2: (4, False), 3: (1, False), 5: (2, False)}
    return gt, gt_segments, pred, pred_segments


def case_split():
    gt = _canvas()
    gt[2:7, 2:12] = 3  # thing a: 50 px, predicted as 30 + 20 px
    gt[12:16, 2:10] = 4  # thing b: 32 px, predicted as 16 + 16 px (IoU 0.5 is not a match)
    gt_segments = {1: (3, False), 2: (4, False), 3: (1, False), 4: (2, False)}
    pred = _canvas()
    pred[2:7, 2:8] = 3
    pred[2:7, 8:12] = 5
    pred[12:16, 2:6] = 4
    pred[12:16, 6:10] = 6
    pred_segments = {
        1: (3, False),
        2: (4, False),
        3: (1, False),
        5: (1, False),
        4: (2, False),
        6: (2, False),
    }
    return gt, gt_segments, pred, pred_segments


def case_relabel():
    gt = _canvas()
    gt[2:6, 2:6] = 3  # thing a predicted as b: FN for a, FP for b
    gt[12:16, 12:16] = 4  # thing b, correct
    gt_segments = {1: (3, False), 2: (4, False), 3: (1, False), 4: (2, False)}
    pred = gt.copy()
    pred_segments = {1: (4, False), 2: (3, False), 3: (2, False), 4: (2, False)}  # stuff swapped
    return gt, gt_segments, pred, pred_segments


def case_missed():
    gt = _canvas()
    gt[2:6, 2:6] = 3  # thing a, not predicted (painted as stuff s)
    gt[12:16, 12:16] = 4  # thing b, shifted by one pixel in the prediction (IoU 12/20)
    gt_segments = {1: (3, False), 2: (4, False), 3: (1, False), 4: (2, False)}
    pred = _canvas()
    pred[13:17, 12:16] = 4
    pred_segments = {1: (3, False), 2: (4, False), 4: (2, False)}
    return gt, gt_segments, pred, pred_segments


CASES = {
    "crowd": case_crowd,
    "void": case_void,
    "split": case_split,
    "relabel": case_relabel,
    "missed": case_missed,
}


def _write_gt(tmp_path, images) -> Tuple[str, str]:
    folder = tmp_path / "panoptic_gt"
    folder.mkdir()
    annotations, image_entries = [], []
    for image_id, (gt_ids, gt_segments, _, _) in enumerate(images, start=1):
        Image.fromarray(id2rgb(gt_ids)).save(folder / f"{image_id:04d}.png")
        image_entries.append(
            {"id": image_id, "file_name": f"{image_id:04d}.jpg", "height": SIZE, "width": SIZE}
        )
        segments_info = []
        for segment_id, (category_id, iscrowd) in gt_segments.items():
            area = int(np.sum(gt_ids == segment_id))
            assert area > 0
            segments_info.append(
                {
                    "id": segment_id,
                    "category_id": category_id,
                    "iscrowd": int(iscrowd),
                    "area": area,
                    "bbox": [0, 0, 1, 1],
                }
            )
        annotations.append(
            {
                "image_id": image_id,
                "file_name": f"{image_id:04d}.png",
                "segments_info": segments_info,
            }
        )
    gt_json = tmp_path / "panoptic_gt.json"
    gt_json.write_text(
        json.dumps({"images": image_entries, "annotations": annotations, "categories": CATEGORIES})
    )
    return str(gt_json), str(folder)


@pytest.fixture
def panoptic_dataset_name(tmp_path, request):
    """A function that writes a hand-built panoptic ground truth, registers its metadata under a
    new name and returns the name."""
    names = []

    def write(images, **metadata_overrides):
        name = f"test_pq_{request.node.name}_{len(names)}"
        folder = tmp_path / name
        folder.mkdir()
        gt_json, gt_folder = _write_gt(folder, images)
        metadata = {
            "panoptic_json": gt_json,
            "panoptic_root": gt_folder,
            "thing_dataset_id_to_contiguous_id": THING_TO_CONTIGUOUS,
            "stuff_dataset_id_to_contiguous_id": STUFF_TO_CONTIGUOUS,
        }
        metadata.update(metadata_overrides)
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield write
    for name in names:
        MetadataCatalog.remove(name)


def _evaluate(name, images, output_dir=None) -> Dict[str, float]:
    evaluator = HotcocoPanopticEvaluator(name, output_dir)
    evaluator.reset()
    for image_id, (_, _, pred_ids, pred_segments) in enumerate(images, start=1):
        segments_info = [
            {
                "id": segment_id,
                "category_id": (THING_TO_CONTIGUOUS if IS_THING[cat] else STUFF_TO_CONTIGUOUS)[cat],
                "isthing": IS_THING[cat],
            }
            for segment_id, (cat, _) in pred_segments.items()
        ]
        evaluator.process(
            [{"image_id": image_id, "file_name": f"/some/where/{image_id:04d}.jpg"}],
            [{"panoptic_seg": (torch.as_tensor(pred_ids, dtype=torch.int32), segments_info)}],
        )
    return evaluator.evaluate()["panoptic_seg"]


def _assert_matches_reference(metrics, images):
    expected = reference_pq(images)
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            got, want = metrics[key.upper() + suffix], 100 * expected[group][key]
            if math.isnan(want):
                assert math.isnan(got), (group, key, got)
            else:
                assert got == pytest.approx(want, abs=1e-9), (group, key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pq_matches_independent_reference(case, panoptic_dataset_name):
    images = [CASES[case]()]
    metrics = _evaluate(panoptic_dataset_name(images), images)
    _assert_matches_reference(metrics, images)


def test_pq_matches_reference_over_several_images(panoptic_dataset_name, tmp_path):
    images = [CASES[case]() for case in sorted(CASES)]
    output_dir = tmp_path / "out"
    metrics = _evaluate(panoptic_dataset_name(images), images, str(output_dir))
    _assert_matches_reference(metrics, images)
    predictions = json.loads((output_dir / "predictions.json").read_text())
    assert len(predictions["annotations"]) == len(images)


def test_pq_known_values(panoptic_dataset_name):
    """Numbers worked out by hand, so the reference itself is checked too."""
    images = [case_split()]
    metrics = _evaluate(panoptic_dataset_name(images), images)
    # thing a: TP (IoU 30/50) + FP; thing b: 2 FP + FN (IoU 16/32 is not > 0.5)
    assert metrics["PQ-a"] == pytest.approx(100 * 0.6 / 1.5)
    assert metrics["PQ-b"] == pytest.approx(0.0)
    assert metrics["PQ_st"] == pytest.approx(100.0)

    images = [case_void()]
    metrics = _evaluate(panoptic_dataset_name(images), images)
    assert metrics["PQ_th"] == pytest.approx(100 * 16 / 20)  # the VOID part leaves the union
    assert metrics["PQ-a"] == pytest.approx(100 * 16 / 20) and "PQ-b" not in metrics


def test_stuff_free_ground_truth_gives_nan_stuff_scores(panoptic_dataset_name):
    gt = np.zeros((SIZE, SIZE), np.int64)
    gt[2:6, 2:6] = 1
    images = [(gt, {1: (1, False)}, gt.copy(), {1: (1, False)})]
    metrics = _evaluate(panoptic_dataset_name(images), images)
    assert metrics["PQ"] == pytest.approx(100.0) and metrics["PQ_th"] == pytest.approx(100.0)
    assert math.isnan(metrics["PQ_st"])


def test_label_divisor_outputs(panoptic_dataset_name):
    """``segments_info=None``: labels are ``category * label_divisor + instance``, -1 = VOID."""
    images = [case_missed()]
    gt, gt_segments, _, _ = images[0]
    # "standard" metadata: contiguous ids unique over things and stuff
    name = panoptic_dataset_name(
        images, label_divisor=1000, stuff_dataset_id_to_contiguous_id={3: 2, 4: 3}
    )
    contiguous = {1: 0, 2: 1, 3: 2, 4: 3}
    labels = np.full(gt.shape, -1, np.int64)
    for segment_id, (category_id, _) in gt_segments.items():
        labels[gt == segment_id] = contiguous[category_id] * 1000 + segment_id
    evaluator = HotcocoPanopticEvaluator(name)
    evaluator.reset()
    evaluator.process(
        [{"image_id": 1, "file_name": "0001.jpg"}],
        [{"panoptic_seg": (torch.as_tensor(labels), None)}],
    )
    assert evaluator.evaluate()["panoptic_seg"]["PQ"] == pytest.approx(100.0)


def test_missing_prediction_is_a_clear_error(panoptic_dataset_name):
    images = [case_missed(), case_split()]
    name = panoptic_dataset_name(images)
    evaluator = HotcocoPanopticEvaluator(name)
    evaluator.reset()
    with pytest.raises(ValueError, match=f"{name}.*no prediction for 2 of 2 ground-truth images"):
        evaluator.evaluate()


# ----------------------------------------------------------------------------------------------
# The whole evaluator stack on the synthetic dataset, fed with its own ground truth


@pytest.fixture(scope="module")
def synthetic_val(tmp_path_factory):
    root = make_synthetic_panoptic(
        tmp_path_factory.mktemp("synthetic") / "synthetic_panoptic",
        num_train=1,
        num_val=10,
        image_size=96,
        seed=5,
    )
    names = register_synthetic_panoptic("test_eval_synthetic_val", root, "val")
    yield names[0]
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_ground_truth_scores_perfectly_through_build_evaluator(synthetic_val, tmp_path):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    evaluator = build_evaluator(cfg, synthetic_val, str(tmp_path / "inference"))
    kinds = sorted(type(e).__name__ for e in evaluator._evaluators)
    assert kinds == ["COCOEvaluator", "HotcocoPanopticEvaluator", "SemSegEvaluator"]

    metadata = MetadataCatalog.get(synthetic_val)
    evaluator.reset()
    for record in DatasetCatalog.get(synthetic_val):
        evaluator.process([record], [ground_truth_outputs(record, metadata)])
    results = evaluator.evaluate()

    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert results["panoptic_seg"][key] == pytest.approx(100.0), key
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert (tmp_path / "inference" / "predictions.json").is_file()


def test_build_evaluator_rejects_unknown_names_and_types():
    cfg = get_cfg()
    with pytest.raises(UnknownDatasetError, match="'no_such_dataset'"):
        build_evaluator(cfg, "no_such_dataset")
    name = "test_eval_without_evaluator_type"
    DatasetCatalog.register(name, lambda: [])
    try:
        with pytest.raises(NotImplementedError, match=f"{name}.*evaluator_type None"):
            build_evaluator(cfg, name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_a_category_absent_from_ground_truth_and_prediction_scores_zero(tmp_path):
    """As panopticapi's pq_average: pq = sq = rq = 0 for a class with no TP, FP or FN."""
    ids = np.zeros((8, 8), np.uint32)
    ids[:4], ids[4:] = 1, 2
    Image.fromarray(id2rgb(ids)).save(tmp_path / "1.png")
    categories = [
        {"id": 1, "name": "a", "isthing": 1},
        {"id": 2, "name": "b", "isthing": 0},
        {"id": 3, "name": "absent", "isthing": 1},
    ]
    segments = [
        {"id": 1, "category_id": 1, "iscrowd": 0, "area": 32},
        {"id": 2, "category_id": 2, "iscrowd": 0, "area": 32},
    ]
    annotations = {
        "images": [{"id": 1, "file_name": "1.jpg", "height": 8, "width": 8}],
        "annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": segments}],
        "categories": categories,
    }
    (tmp_path / "gt.json").write_text(json.dumps(annotations))
    results = pq_compute(str(tmp_path / "gt.json"), annotations, str(tmp_path), str(tmp_path))
    absent = results["per_class"][3]
    assert (absent["pq"], absent["sq"], absent["rq"]) == (0.0, 0.0, 0.0)
    assert results["per_class"][1]["pq"] == 1.0 and results["Things"]["pq"] == 1.0
