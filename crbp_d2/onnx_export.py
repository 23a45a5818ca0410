"""ONNX export of the fixed-step recurrent mask head, checked against eager with onnxruntime.

``pip install 'crbp-d2[onnx]'`` (onnx, onnxscript for torch's exporter, onnxruntime). Works for
any fixed-step head module, (R, C, 14, 14) RoI features -> (R, K, 28, 28) mask logits: the
Detectron2 one (:class:`crbp_d2.rfpn.modeling.export.FixedStepMaskHead`) and the torchvision one
(:class:`crbp_d2.tv.FixedStepMaskHead`), hGRU or convLSTM cell.

What exports (torch 2.14.1, ``torch.onnx.export(dynamo=True)``, opset 18, onnxruntime 1.32;
``tests/test_onnx_export.py``): the head with the number of RoIs R dynamic, R >= 1; onnxruntime
gives the eager logits to 1e-4 for both cells at RoI counts other than the example's. What does
not: R = 0 (onnxruntime's GroupNorm reshapes the empty tensor to (0, G, -1) and fails; skip the
head when there is no detection, as eager code may not), and the engine's own inference path
(per-step residuals read back as Python numbers, halting; see ``docs/rfpn.md``, "Export"), nor
the whole detector around it (as for ``torch.export``).
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from ._extras import require_extra

__all__ = ["export_mask_head_onnx", "onnx_max_abs_error"]

INPUT_NAME = "roi_features"
OUTPUT_NAME = "mask_logits"
OPSET = 18


def export_mask_head_onnx(
    head: nn.Module, example: Tensor, path: Union[str, "os.PathLike[str]"], opset: int = OPSET
) -> str:
    """Export ``head`` (a fixed-step head, put in eval mode) to ONNX at ``path`` with input
    ``roi_features`` (R, C, 14, 14) and output ``mask_logits`` (R, K, 28, 28), R dynamic (>= 1).
    Returns ``path``."""
    require_extra("onnx", "ONNX export")
    head = head.eval()
    rois = torch.export.Dim("rois", min=1)
    with torch.no_grad():
        torch.onnx.export(
            head,
            (example,),
            os.fspath(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: rois},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    return os.fspath(path)


def onnx_max_abs_error(
    path: Union[str, "os.PathLike[str]"], head: nn.Module, inputs: Sequence[Tensor]
) -> float:
    """Largest |onnxruntime - eager| over the logits of every tensor in ``inputs`` (CPU)."""
    require_extra("onnx", "the onnxruntime check")
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    head = head.eval()
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            eager = head(x)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy()})
        if tuple(got.shape) != tuple(eager.shape):
            raise ValueError(f"ONNX output shape {got.shape} != eager {tuple(eager.shape)}")
        worst = max(worst, float((torch.from_numpy(got) - eager.cpu()).abs().max()))
    return worst
