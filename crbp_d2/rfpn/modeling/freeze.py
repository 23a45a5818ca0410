"""Train the mask head only: freeze the rest of a Detectron2 model.

For fine-tuning a fresh recurrent head on a feedforward Panoptic FPN checkpoint
(``SOLVER.TRAIN_ONLY_HEAD`` in a yacs config, ``train.train_only_head``
in a LazyConfig): the backbone, RPN, box head and semantic head keep the checkpoint's weights and
outputs, so the detections (boxes, scores, classes) and the stuff segmentation are those of the
checkpoint and only the masks change.
"""

from __future__ import annotations

from typing import Dict

from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["MASK_HEAD_PREFIX", "freeze_all_but_mask_head"]

MASK_HEAD_PREFIX = "roi_heads.mask_head"


def _freeze_batch_norms(module: nn.Module, keep: nn.Module) -> int:
    """Replace every BatchNorm / SyncBatchNorm below ``module`` (not inside ``keep``) by a
    FrozenBatchNorm2d with the same statistics and affine weights; returns how many."""
    converted = 0
    for name, child in module.named_children():
        if child is keep:
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, FrozenBatchNorm2d.convert_frozen_batchnorm(child))
            converted += 1
        else:
            converted += _freeze_batch_norms(child, keep)
    return converted


def freeze_all_but_mask_head(model: nn.Module) -> Dict[str, int]:
    """Freeze every parameter of ``model`` outside ``roi_heads.mask_head``, in place.

    Parameters outside the head get ``requires_grad = False``: Detectron2's optimizers (built by
    ``get_default_optimizer_params``, for SGD and AdamW alike) skip them, so they get no update,
    no weight decay and no momentum. BatchNorm layers outside the head are converted to
    ``FrozenBatchNorm2d`` (their running statistics would otherwise keep moving in train mode).
    Call it after building the model and before building the optimizer (and before loading
    weights: FrozenBN loads BatchNorm weights and statistics; the BN step counters
    ``num_batches_tracked`` are then reported as not in the model).

    Returns:
        ``{"trainable": parameters left trainable (numel), "frozen": parameters frozen (numel),
        "frozen_batch_norms": BatchNorm layers converted}``.
    """
    roi_heads = getattr(model, "roi_heads", None)
    head = getattr(roi_heads, "mask_head", None) if roi_heads is not None else None
    if not isinstance(head, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no {MASK_HEAD_PREFIX} module, so there is no mask head "
            "to train alone (SOLVER.TRAIN_ONLY_HEAD / train.train_only_head need a Mask R-CNN / "
            "Panoptic FPN model with MASK_ON)"
        )
    head_params = {id(p) for p in head.parameters()}
    trainable = frozen = 0
    for param in model.parameters():
        if id(param) in head_params:
            trainable += param.numel() if param.requires_grad else 0
        else:
            frozen += param.numel()
            param.requires_grad_(False)
    converted = _freeze_batch_norms(model, head)
    return {"trainable": trainable, "frozen": frozen, "frozen_batch_norms": converted}
