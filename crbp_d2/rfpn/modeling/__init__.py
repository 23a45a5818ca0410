"""Detectron2 modeling: the recurrent (R-FPN) mask head.

Importing this package registers ``RecurrentMaskHead`` (and its alias
``RecurrentMaskRCNNConvUpsampleHead``) in Detectron2's ``ROI_MASK_HEAD_REGISTRY``.
"""

from .freeze import freeze_all_but_mask_head
from .recurrent_mask_head import (
    RecurrentMaskHead,
    RecurrentMaskRCNNConvUpsampleHead,
    build_recurrent_engine,
)
from .timecourse import instances_at_step, panoptic_at_step, recurrent_mask_head

__all__ = [
    "RecurrentMaskHead",
    "RecurrentMaskRCNNConvUpsampleHead",
    "build_recurrent_engine",
    "freeze_all_but_mask_head",
    "instances_at_step",
    "panoptic_at_step",
    "recurrent_mask_head",
]
