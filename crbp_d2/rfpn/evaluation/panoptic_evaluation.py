"""Panoptic quality (PQ) for Detectron2, computed by hotcoco instead of panopticapi.

Detectron2's :class:`~detectron2.evaluation.COCOPanopticEvaluator` imports ``panopticapi``, which
is not installable from PyPI. :class:`HotcocoPanopticEvaluator` keeps its interface, inputs and
outputs (the ``panoptic_seg`` metrics PQ, SQ, RQ, PQ_th, ..., RQ_st, in percent) and replaces the
two panopticapi calls: the RGB id encoding (project code) and ``pq_compute``
(``hotcoco.panoptic``, which matches panopticapi, including its crowd and VOID rules).
"""

import io
import itertools
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.evaluation.panoptic_evaluation import _print_panoptic_results
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from ...scenes.panoptic import id2rgb
from ..data.datasets import prepare_dataset_files

logger = logging.getLogger(__name__)

__all__ = ["HotcocoPanopticEvaluator", "pq_compute"]

_GROUPS = (("All", ""), ("Things", "_th"), ("Stuff", "_st"))


def pq_compute(gt_json: str, pred: Mapping, gt_folder: str, pred_folder: str) -> Dict[str, Dict]:
    """PQ/SQ/RQ as fractions in panopticapi's result shape (``All``/``Things``/``Stuff`` and
    ``per_class``). ``pred`` is the prediction json content; its PNGs are in ``pred_folder``.

    A group without any category to average (e.g. ``Stuff`` for a dataset without stuff) gets
    NaN scores, where panopticapi raises ZeroDivisionError. A category with no ground truth and
    no prediction gets 0 per-class scores, as in panopticapi (hotcoco reports -1).
    """
    from hotcoco import panoptic

    evaluation = panoptic.PanopticEval(
        gt_json, dict(pred), gt_folder=gt_folder, pred_folder=pred_folder
    )
    evaluation.evaluate()  # evaluate() alone prints nothing, unlike pq_compute()/run()
    results = evaluation.results()
    for group, _ in _GROUPS:
        if results[group]["n"] == 0:
            results[group].update(pq=math.nan, sq=math.nan, rq=math.nan)
    for scores in results["per_class"].values():
        if scores.get("tp", 0) + scores.get("fp", 0) + scores.get("fn", 0) == 0:
            scores.update(pq=0.0, sq=0.0, rq=0.0)
    return results


class HotcocoPanopticEvaluator(COCOPanopticEvaluator):
    """:class:`~detectron2.evaluation.COCOPanopticEvaluator` backed by hotcoco.

    ``process`` takes the model outputs' ``panoptic_seg`` = ``(segment_ids, segments_info)``
    (segment 0 = VOID, contiguous category ids with ``isthing``), or ``(panoptic_labels, None)``
    with ``category * label_divisor + instance`` labels and -1 = VOID, exactly like the parent.
    ``evaluate`` returns ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "RQ_st",
    "PQ-<class>", ...}}`` in percent; it writes ``predictions.json`` to ``output_dir`` if given.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        prepare_dataset_files(dataset_name)
        super().__init__(dataset_name, output_dir)
        self._dataset_name = dataset_name
        for key in ("panoptic_json", "panoptic_root"):
            if not hasattr(self._metadata, key):
                raise ValueError(
                    f"Dataset {dataset_name!r} has no '{key}' metadata, so it cannot be "
                    "evaluated for panoptic quality (register it with "
                    "register_coco_panoptic_separated or register_coco_panoptic)"
                )

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        for input_dict, output in zip(inputs, outputs):
            segment_ids, segments_info = output["panoptic_seg"]
            segment_ids = np.asarray(
                segment_ids.cpu().numpy() if hasattr(segment_ids, "cpu") else segment_ids
            )
            if segments_info is None:
                segment_ids, segments_info = self._segments_from_labels(segment_ids)
            segments_info = [self._convert_category_id(dict(s)) for s in segments_info]
            with io.BytesIO() as png:
                Image.fromarray(id2rgb(segment_ids)).save(png, format="PNG")
                png_bytes = png.getvalue()
            stem = os.path.splitext(os.path.basename(input_dict["file_name"]))[0]
            self._predictions.append(
                {
                    "image_id": input_dict["image_id"],
                    "file_name": stem + ".png",
                    "png_string": png_bytes,
                    "segments_info": segments_info,
                }
            )

    def _segments_from_labels(self, labels: np.ndarray) -> Tuple[np.ndarray, List[Dict]]:
        """``category * label_divisor + instance`` labels (-1 = VOID) -> segment ids (0 = VOID)
        and segments with contiguous category ids."""
        label_divisor = self._metadata.label_divisor
        thing_ids = set(self._metadata.thing_dataset_id_to_contiguous_id.values())
        segments_info = []
        for label in np.unique(labels):
            if label == -1:
                continue
            category = int(label) // label_divisor
            segments_info.append(
                {"id": int(label) + 1, "category_id": category, "isthing": category in thing_ids}
            )
        return labels.astype(np.int64) + 1, segments_info

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None

        gt_json = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        with open(gt_json, "r") as f:
            gt = json.load(f)
        predicted = {p["image_id"] for p in predictions}
        missing = [a["image_id"] for a in gt["annotations"] if a["image_id"] not in predicted]
        if missing:
            raise ValueError(
                f"Panoptic evaluation of {self._dataset_name!r}: no prediction for "
                f"{len(missing)} of {len(gt['annotations'])} ground-truth images (e.g. image_id "
                f"{missing[0]}); PQ needs a processed output for every image of the dataset"
            )
        with tempfile.TemporaryDirectory(prefix="panoptic_eval") as pred_folder:
            logger.info(f"Writing {len(predictions)} panoptic predictions to {pred_folder} ...")
            annotations = []
            for prediction in predictions:
                with open(os.path.join(pred_folder, prediction["file_name"]), "wb") as f:
                    f.write(prediction["png_string"])
                annotations.append({k: v for k, v in prediction.items() if k != "png_string"})
            pred = dict(gt, annotations=annotations)
            predictions_json = os.path.join(self._output_dir or pred_folder, "predictions.json")
            with PathManager.open(predictions_json, "w") as f:
                f.write(json.dumps(pred))
            try:
                pq_results = pq_compute(gt_json, pred, gt_folder, pred_folder)
            except ValueError as e:
                raise ValueError(f"Panoptic evaluation of {self._dataset_name!r}: {e}") from e

        metrics = OrderedDict()
        for group, suffix in _GROUPS:
            for name in ("PQ", "SQ", "RQ"):
                metrics[name + suffix] = 100 * pq_results[group][name.lower()]
        names = {c["id"]: c["name"] for c in gt["categories"]}
        for category_id, scores in sorted(pq_results["per_class"].items()):
            if scores["tp"] + scores["fp"] + scores["fn"] > 0:
                metrics[f"PQ-{names[category_id]}"] = 100 * scores["pq"]
        _print_panoptic_results(pq_results)
        return OrderedDict({"panoptic_seg": metrics})
