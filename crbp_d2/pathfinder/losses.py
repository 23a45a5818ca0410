"""The Pathfinder training loss: per-pixel focal or cross-entropy, plus the weighted LCP."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from crbp_d2.recurrent import cell_output

from .modeling import SegmenterOutput


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    kind: str = "focal",
    gamma: float = 2.0,
    contour_weight: float = 1.0,
) -> Tensor:
    """Per-pixel loss averaged over pixels: (B, 2, H, W) logits, (B, H, W) int64 target -> 0-d.

    ``focal``: -(1 - p_t)^gamma log p_t (the authors' code, gamma 2); ``ce``: -log p_t (paper).
    With ``contour_weight`` != 1 contour pixels weigh that much and the mean is weighted.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    if kind == "focal":
        loss = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    elif kind == "ce":
        loss = -log_pt
    else:
        raise ValueError(f"unknown loss {kind!r}; choose 'focal' or 'ce'")
    if contour_weight == 1.0:
        return loss.mean()
    weight = torch.where(target > 0, contour_weight, 1.0).to(loss.dtype)
    return (loss * weight).sum() / weight.sum()


def compute_loss(
    model: nn.Module, image: Tensor, label: Tensor, cfg
) -> Tuple[Tensor, Tensor, SegmenterOutput]:
    """(total loss, task loss, model output) for a (B, 1, H, W) image batch and its (B, H, W)
    labels; total = task + ``MODEL.RECURRENT.LCP_WEIGHT`` x LCP (the LCP_METHODS)."""
    out = model(image)
    task = segmentation_loss(
        out.logits, label, cfg.SOLVER.LOSS, cfg.SOLVER.FOCAL_GAMMA, cfg.SOLVER.CONTOUR_WEIGHT
    )
    total = task
    if out.lcp is not None:  # the methods that train the LCP (LCP_METHODS)
        total = task + cfg.MODEL.RECURRENT.LCP_WEIGHT * out.lcp.float()
    return total, task, out


def gradient_fidelity(model: nn.Module, image: Tensor, label: Tensor, cfg) -> Dict[str, float]:
    """The engine's :meth:`~crbp_d2.recurrent.RecurrentEngine.gradient_fidelity` on one batch:
    the configured method's gradient of the task loss against the exact one (cell parameters).
    Empty for models without a recurrent engine."""
    model = getattr(model, "module", model)
    if not getattr(model, "recurrent", False):
        return {}

    def task_loss(state) -> Tensor:
        logits = model.readout(cell_output(model.engine.cell, state))
        return segmentation_loss(
            logits, label, cfg.SOLVER.LOSS, cfg.SOLVER.FOCAL_GAMMA, cfg.SOLVER.CONTOUR_WEIGHT
        )

    with torch.no_grad():
        drive = model.input_layer(image)
    fidelity = model.engine.gradient_fidelity(drive, task_loss)
    logged = ("reference_residual", "reference_converged")
    return {k: v for k, v in fidelity.items() if k.startswith("grad_") or k in logged}
