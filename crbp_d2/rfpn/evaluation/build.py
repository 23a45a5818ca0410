"""``build_evaluator``: the evaluators of a dataset, chosen by its ``evaluator_type`` metadata."""

import os
from typing import List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from ..data.datasets import check_dataset_name, prepare_dataset_files
from .panoptic_evaluation import HotcocoPanopticEvaluator

__all__ = ["build_evaluator", "coco_tasks_from_config"]

SUPPORTED_EVALUATOR_TYPES = ("coco_panoptic_seg", "coco", "sem_seg")


def coco_tasks_from_config(cfg: CfgNode) -> Tuple[str, ...]:
    """The COCO tasks the configured model predicts: bbox, plus segm/keypoints when enabled."""
    tasks = ("bbox",)
    if cfg.MODEL.MASK_ON:
        tasks += ("segm",)
    if cfg.MODEL.KEYPOINT_ON:
        tasks += ("keypoints",)
    return tasks


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluators:
    """Evaluators for ``dataset_name``, as Detectron2's ``tools/train_net.py`` picks them.

    * ``coco_panoptic_seg``: :class:`SemSegEvaluator` + :class:`COCOEvaluator` +
      :class:`HotcocoPanopticEvaluator` (PQ);
    * ``coco``: :class:`COCOEvaluator`; ``sem_seg``: :class:`SemSegEvaluator`.

    COCOEvaluator uses pycocotools' COCOeval (``use_fast_impl=False``: the fast one needs the
    compiled Detectron2 extension) on the tasks of :func:`coco_tasks_from_config`.

    Args:
        cfg: the config (``OUTPUT_DIR``, ``MODEL.MASK_ON``/``KEYPOINT_ON``,
            ``TEST.DETECTIONS_PER_IMAGE``, ``TEST.KEYPOINT_OKS_SIGMAS``).
        dataset_name: a registered dataset.
        output_folder: where evaluators dump predictions; default ``OUTPUT_DIR/inference``.
    """
    check_dataset_name(dataset_name)
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    prepare_dataset_files(dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")

    evaluators: List[DatasetEvaluator] = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluators.append(
            COCOEvaluator(
                dataset_name,
                tasks=coco_tasks_from_config(cfg),
                distributed=True,
                output_dir=output_folder,
                max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                use_fast_impl=False,
                kpt_oks_sigmas=tuple(cfg.TEST.KEYPOINT_OKS_SIGMAS),
            )
        )
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(HotcocoPanopticEvaluator(dataset_name, output_folder))
    if not evaluators:
        raise NotImplementedError(
            f"No evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r}; "
            f"build_evaluator supports {', '.join(SUPPORTED_EVALUATOR_TYPES)}"
        )
    return DatasetEvaluators(evaluators)
