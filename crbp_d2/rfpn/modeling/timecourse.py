"""Per-step outputs of a model with the recurrent mask head (timestep sweep, timecourse demo).

With ``head.return_timecourse = True`` one inference pass at T test steps stores, on each output
``Instances``, ``pred_masks_steps`` (R, T, 28, 28): the mask probability after every step. The
state after step t of a T-step run is the state of a t-step run (same start h0 = 0, same drive),
and boxes, classes and the semantic head do not depend on the mask head, so the panoptic output
"at t steps" can be rebuilt from that one pass, exactly as Detectron2's postprocessing builds it.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from detectron2.layers import paste_masks_in_image
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Instances
from torch import nn

from .recurrent_mask_head import RecurrentMaskHead

__all__ = ["recurrent_mask_head", "instances_at_step", "panoptic_at_step"]


def recurrent_mask_head(model: nn.Module) -> RecurrentMaskHead:
    """The :class:`RecurrentMaskHead` of a (possibly DDP-wrapped) Detectron2 model."""
    module = getattr(model, "module", model)
    head = getattr(getattr(module, "roi_heads", None), "mask_head", None)
    if not isinstance(head, RecurrentMaskHead):
        raise ValueError(
            f"the model's mask head is {type(head).__name__}, not RecurrentMaskHead: set "
            "MODEL.ROI_MASK_HEAD.NAME RecurrentMaskHead (per-step outputs need the recurrent head)"
        )
    return head


def instances_at_step(instances: Instances, step: int, mask_threshold: float = 0.5) -> Instances:
    """Postprocessed ``instances`` (boxes in output pixels) with ``pred_masks`` replaced by the
    (R, H, W) boolean masks of recurrent step ``step`` (1-based) pasted into the image.

    Steps past the recorded ones (the engine halted early) use the last recorded step.
    """
    if not instances.has("pred_masks_steps"):
        raise ValueError("instances have no pred_masks_steps: set head.return_timecourse = True")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    steps = instances.pred_masks_steps
    index = min(step, steps.shape[1]) - 1
    fields = {k: v for k, v in instances.get_fields().items() if k != "pred_masks_steps"}
    result = Instances(instances.image_size, **fields)
    height, width = instances.image_size
    if len(instances):
        result.pred_masks = paste_masks_in_image(
            steps[:, index], instances.pred_boxes, (height, width), threshold=mask_threshold
        )
    else:
        result.pred_masks = torch.zeros((0, height, width), dtype=torch.bool, device=steps.device)
    return result


def panoptic_at_step(
    model: nn.Module, output: Dict, step: int, semantic: Optional[torch.Tensor] = None
) -> Dict:
    """The ``panoptic_seg`` (and ``instances``) a Panoptic FPN ``model`` would output at ``step``
    test steps, from one of its outputs with ``pred_masks_steps``.

    ``semantic``: ``output["sem_seg"].argmax(dim=0)`` (H, W) if already computed (it does not
    depend on the step; a sweep computes it once per image)."""
    module = getattr(model, "module", model)
    instances = instances_at_step(output["instances"], step)
    if semantic is None:
        semantic = output["sem_seg"].argmax(dim=0)
    panoptic = combine_semantic_and_instance_outputs(
        instances,
        semantic,
        module.combine_overlap_thresh,
        module.combine_stuff_area_thresh,
        module.combine_instances_score_thresh,
    )
    return {"instances": instances, "panoptic_seg": panoptic}
