"""The recurrent mask head in torchvision's Mask R-CNN (no Detectron2 anywhere).

torchvision's :class:`~torchvision.models.detection.roi_heads.RoIHeads` computes the mask logits
as ``mask_predictor(mask_head(mask_roi_pool(...)))``. Here, for R RoIs of C channels::

    mask_head = RecurrentMaskFeatures:  (R, C, 14, 14) --engine: N steps, any method--> h_N
    mask_predictor = MaskReadout:       h_N --norm--> ConvTranspose 2x2 s2 + ReLU
                                        --> 1x1 --> (R, num_classes, 28, 28) mask logits

and :class:`RecurrentRoIHeads` (the same RoIHeads, same state-dict keys) adds ``loss_lcp``
(``lcp_weight`` x LCP, for the methods that train it) to the loss dict and, when
``return_timecourse`` is set, ``masks_steps`` (n, T, 28, 28): the predicted class's mask
probability after every step, per image, in RoI coordinates (as Detectron2's
``pred_masks_steps``). :func:`use_recurrent_mask_head` puts all three into any torchvision
:class:`~torchvision.models.detection.MaskRCNN`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference

from ..recurrent import (
    ConvLSTMCell,
    EngineSpec,
    MaskHeadHGRUCell,
    RecurrenceOutput,
    RecurrentEngine,
    make_norm,
)

__all__ = [
    "FixedStepMaskHead",
    "MaskReadout",
    "RecurrentMaskFeatures",
    "RecurrentRoIHeads",
    "build_mask_head_engine",
    "use_recurrent_mask_head",
]


def build_mask_head_engine(
    width: int,
    cell: str = "hgru",
    steps: int = 6,
    method: str = "crbp",
    kernel_size: int = 3,
    cell_norm: str = "GN",
    cell_norm_groups: int = 32,
    **spec: object,
) -> RecurrentEngine:
    """The R-FPN mask-head recurrence with the Detectron2 head's defaults (GALA hGRU, softplus,
    GroupNorm in the cell; LCP summed, weight 1e-3), on RoI features of ``width`` channels.

    Args:
        cell: ``hgru`` (:class:`MaskHeadHGRUCell`) or ``convlstm``.
        steps, method: N and the learning method (any of :data:`crbp_d2.recurrent.METHODS`).
        spec: any other :class:`~crbp_d2.recurrent.EngineSpec` field (``neumann_steps``,
            ``lcp_weight``, ``test_steps``, ...).
    """
    settings = {"lcp_weight": 1e-3, "lcp_reduction": "sum", **spec}
    engine_spec = EngineSpec(steps=steps, method=method, **settings)
    if cell == "hgru":
        module: nn.Module = MaskHeadHGRUCell(
            channels=width,
            kernel_size=kernel_size,
            timesteps=steps,
            norm=cell_norm,
            norm_groups=min(cell_norm_groups, width),
        )
    elif cell == "convlstm":
        module = ConvLSTMCell(width, width, kernel_size, implicit_state="joint")
    else:
        raise ValueError(f"cell = {cell!r}: unknown; choose 'hgru' or 'convlstm'")
    return RecurrentEngine.from_spec(module, engine_spec)


class RecurrentMaskFeatures(nn.Module):
    """torchvision's ``mask_head`` slot: (R, C, 14, 14) RoI features -> (R, C, 14, 14) final
    hidden state of the engine. Keeps the engine's output of the last call (its LCP, per-step
    states and diagnostics) for :class:`RecurrentRoIHeads`."""

    def __init__(self, engine: RecurrentEngine) -> None:
        super().__init__()
        self.engine = engine
        self.record_states = False
        self.last_output: Optional[RecurrenceOutput] = None
        self.last_diagnostics: Dict[str, float] = {}

    @property
    def lcp_weight(self) -> float:
        return float(self.engine.spec.lcp_weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.engine(x, record_states=self.record_states and not self.training)
        self.last_output = out
        self.last_diagnostics = out.diagnostics.scalars()
        return self.engine.cell.output(out.state)

    def take_output(self) -> Optional[RecurrenceOutput]:
        """The last call's engine output, forgotten here (so no graph outlives the step)."""
        out, self.last_output = self.last_output, None
        return out


class MaskReadout(nn.Module):
    """torchvision's ``mask_predictor`` slot: (R, C, 14, 14) state -> (R, num_classes, 28, 28)
    logits (norm, ConvTranspose 2x2 stride 2, ReLU, 1x1 conv; the Detectron2 head's init)."""

    def __init__(self, width: int, num_classes: int, norm: str = "GN", norm_groups: int = 32):
        super().__init__()
        if norm == "GN":
            self.norm: nn.Module = nn.GroupNorm(min(norm_groups, width), width)
        elif norm in ("", "none"):
            self.norm = nn.Identity()
        else:
            self.norm = make_norm(norm, width, weight_init=1.0)
        self.deconv = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(width, num_classes, kernel_size=1)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.predictor(torch.relu(self.deconv(self.norm(h))))


class RecurrentRoIHeads(RoIHeads):
    """torchvision's RoIHeads with a :class:`RecurrentMaskFeatures` mask head: adds
    ``loss_lcp`` in training and, with ``return_timecourse``, ``masks_steps`` at inference.
    Build it from an existing RoIHeads with :meth:`from_roi_heads` (same modules and keys)."""

    mask_head: RecurrentMaskFeatures
    mask_predictor: MaskReadout

    @classmethod
    def from_roi_heads(
        cls, heads: RoIHeads, mask_head: RecurrentMaskFeatures, mask_predictor: MaskReadout
    ) -> "RecurrentRoIHeads":
        """A RecurrentRoIHeads with the box branch, mask pooler and settings of ``heads``."""
        if heads.keypoint_predictor is not None:
            raise ValueError("RecurrentRoIHeads does not carry a keypoint branch")
        sampler = heads.fg_bg_sampler
        return cls(
            heads.box_roi_pool,
            heads.box_head,
            heads.box_predictor,
            heads.proposal_matcher.high_threshold,
            heads.proposal_matcher.low_threshold,
            sampler.batch_size_per_image,
            sampler.positive_fraction,
            heads.box_coder.weights,
            heads.score_thresh,
            heads.nms_thresh,
            heads.detections_per_img,
            mask_roi_pool=heads.mask_roi_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
        )

    @property
    def return_timecourse(self) -> bool:
        """At inference, also return ``masks_steps`` (n, T, 28, 28) per image."""
        return self.mask_head.record_states

    @return_timecourse.setter
    def return_timecourse(self, value: bool) -> None:
        self.mask_head.record_states = bool(value)

    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: Optional[List[Dict[str, Tensor]]] = None,
    ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        result, losses = super().forward(features, proposals, image_shapes, targets)
        out = self.mask_head.take_output()
        if out is None:
            return result, losses
        if self.training:
            if out.lcp is not None:
                losses["loss_lcp"] = self.mask_head.lcp_weight * out.lcp
        elif out.states is not None:
            labels = [r["labels"] for r in result]
            per_step = [
                maskrcnn_inference(
                    self.mask_predictor(self.mask_head.engine.cell.output(s)), labels
                )
                for s in out.states
            ]  # T x images x (n, 1, 28, 28)
            for i, r in enumerate(result):
                r["masks_steps"] = torch.cat([step[i] for step in per_step], dim=1)
        return result, losses


def use_recurrent_mask_head(
    model: MaskRCNN,
    engine: RecurrentEngine,
    num_classes: Optional[int] = None,
    readout_norm: str = "GN",
) -> MaskRCNN:
    """Put the recurrent mask head (``engine``'s cell, trained with its method) into ``model``
    in place of its 4-conv ``mask_head`` and its ``mask_predictor``; returns ``model``.

    Args:
        engine: e.g. :func:`build_mask_head_engine` (its width must be the backbone's
            ``out_channels``).
        num_classes: mask classes including background (default: the box predictor's).
        readout_norm: ``GN`` (default), ``BN``, ``IN`` or ``""``.
    """
    width = engine.cell.hidden_channels
    if model.backbone.out_channels != width:
        raise ValueError(
            f"the engine's cell has {width} channels but the backbone gives "
            f"{model.backbone.out_channels}; build the engine with width "
            f"{model.backbone.out_channels}"
        )
    if num_classes is None:
        num_classes = model.roi_heads.box_predictor.cls_score.out_features
    model.roi_heads = RecurrentRoIHeads.from_roi_heads(
        model.roi_heads,
        RecurrentMaskFeatures(engine),
        MaskReadout(width, num_classes, readout_norm),
    )
    return model


class FixedStepMaskHead(nn.Module):
    """The recurrent mask head of ``roi_heads`` at ``steps`` steps (default: its test steps) as
    plain tensor operations, for ``torch.export`` and ONNX: (R, C, 14, 14) RoI features ->
    (R, num_classes, 28, 28) mask logits. Shares the parameters (no copy)."""

    def __init__(self, roi_heads: RecurrentRoIHeads, steps: Optional[int] = None) -> None:
        super().__init__()
        self.cell = roi_heads.mask_head.engine.cell
        self.readout = roi_heads.mask_predictor
        self.steps = int(steps if steps is not None else roi_heads.mask_head.engine.test_steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def forward(self, x: Tensor) -> Tensor:
        drive = self.cell.prepare(x)
        state = self.cell.init_state(drive)
        for _ in range(self.steps):
            state = self.cell(drive, state)
        return self.readout(self.cell.output(state))
