"""Evaluation for the Detectron2 side: PQ through hotcoco, plus Detectron2's COCO (instances) and
semantic segmentation evaluators, combined by :func:`build_evaluator`."""

from .build import build_evaluator, coco_tasks_from_config
from .panoptic_evaluation import HotcocoPanopticEvaluator, pq_compute

__all__ = ["build_evaluator", "coco_tasks_from_config", "HotcocoPanopticEvaluator", "pq_compute"]
