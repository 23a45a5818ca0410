"""Export of the recurrent mask head: a fixed-step inference path that ``torch.export`` accepts.

Training and the default inference path go through the engine (custom autograd Functions,
per-step residuals read back as Python numbers, optional halting). For deployment,
:class:`FixedStepMaskHead` runs the same cell for a fixed number of steps and the same readout,
with nothing but tensor operations, so ``torch.export.export`` (and ONNX / TorchScript tracing)
can capture it; :func:`export_mask_head` does that with a dynamic number of RoIs.

What exports (tried with Detectron2 v0.6 and torch 2.14.1, ``torch.export.export``, non-strict;
``docs/rfpn.md``, "Export"):

* the head alone, (R, C, 14, 14) RoI features -> (R, num_classes, 28, 28) mask logits, R dynamic
  (:func:`export_mask_head`; ``tests/test_d2_export.py`` checks the logits against the eager head
  to 1e-5, hGRU and convLSTM, and that the graph holds ATen operators only). The head's own
  inference path does not export: the engine reads each step's residual back as a Python number
  (diagnostics, halting), a data-dependent value;
* pieces of Panoptic FPN around it: backbone + FPN + semantic head on a padded image tensor, and
  backbone + mask pooler + this head on a fixed number of given boxes (the box count is
  specialised: the pooler builds a tensor of the per-image box counts from Python ints).

What does not: the whole model. ``model(batched_inputs)`` stops in ``ImageList.from_tensors``
(the padded size is computed with tensors, so every shape after it is data-dependent); fed a padded
tensor, the RPN stops in ``find_top_rpn_proposals`` (a Python ``if`` on ``valid_mask.all()``), and
after it come NMS and top-k with data-dependent counts, ``Instances`` outputs and the panoptic merge
(Python loops over segments). Detectron2's ``TracingAdapter``, which flattens ``Instances`` for
tracing, cannot be imported in a pure-Python v0.6 install (``detectron2.export`` imports caffe2).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .recurrent_mask_head import RecurrentMaskHead

__all__ = ["FixedStepMaskHead", "export_mask_head"]


class FixedStepMaskHead(nn.Module):
    """The mask head of ``head`` at ``steps`` recurrent steps (default: its test steps), as plain
    tensor operations: (R, C, 14, 14) RoI features -> (R, num_classes, 28, 28) mask logits.
    Shares the parameters of ``head`` (no copy)."""

    def __init__(self, head: RecurrentMaskHead, steps: Optional[int] = None) -> None:
        super().__init__()
        self.cell = head.engine.cell
        self.readout_norm = head.readout_norm
        self.deconv = head.deconv
        self.predictor = head.predictor
        self.steps = int(steps if steps is not None else head.test_steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def forward(self, x: Tensor) -> Tensor:
        drive = self.cell.prepare(x)
        state = self.cell.init_state(drive)
        for _ in range(self.steps):
            state = self.cell(drive, state)
        hidden = self.cell.output(state)
        return self.predictor(torch.relu(self.deconv(self.readout_norm(hidden))))


def export_mask_head(
    head: RecurrentMaskHead, example: Tensor, steps: Optional[int] = None
) -> "torch.export.ExportedProgram":
    """``torch.export.export`` of :class:`FixedStepMaskHead` (in eval mode) for RoI features
    shaped like ``example`` (R, C, 14, 14), the number of RoIs R dynamic (>= 2)."""
    module = FixedStepMaskHead(head, steps).eval()
    rois = torch.export.Dim("rois", min=2)
    return torch.export.export(module, (example,), dynamic_shapes=({0: rois},))
