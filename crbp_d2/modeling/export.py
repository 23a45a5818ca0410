"""Export of the recurrent mask head: a fixed-step inference path that ``torch.export`` accepts.

Training and the default inference path go through the engine (custom autograd Functions,
per-step residuals read back as Python numbers, optional halting). For deployment,
:class:`FixedStepMaskHead` runs the same cell for a fixed number of steps and the same readout,
with nothing but tensor operations, so ``torch.export.export`` (and ONNX / TorchScript tracing)
can capture it; :func:`export_mask_head` does that with a dynamic number of RoIs.

What exports: the head alone, from (R, C, 14, 14) RoI features to (R, num_classes, 28, 28) mask
logits. The whole Panoptic FPN does not export with Detectron2 v0.6: its ``forward`` takes and
returns Python lists of dicts and ``Instances``, and its post-processing (NMS, the panoptic merge)
has data-dependent output sizes and Python loops; see ``docs/rfpn.md`` ("Export").
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
