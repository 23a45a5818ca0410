"""The R-FPN mask head: a recurrent cell on the RoI features in place of the 4-conv stack.

Data flow for R RoIs (C = ``MODEL.ROI_MASK_HEAD.CONV_DIM``, 256 in the paper)::

    x (R, C, 14, 14) --engine: N steps of the cell, learning method--> h_N (R, C, 14, 14)
      --readout norm--> --ConvTranspose 2x2 s2 + ReLU--> (R, C, 28, 28)
      --1x1 predictor--> mask logits (R, num_classes, 28, 28)

In training the head returns ``loss_mask`` (Mask R-CNN per-class BCE) and, for the methods with a
Lipschitz Coefficient Penalty (LCP_METHODS), ``loss_lcp`` = LCP_WEIGHT x LCP, the way PointRend's
implicit head returns its extra regulariser: no ROIHeads subclass is needed. At inference it runs
the test steps (or halts adaptively) and, when :attr:`RecurrentMaskHead.return_timecourse` is set,
also returns the mask probabilities of every step as ``pred_masks_steps``.

Under DistributedDataParallel every process runs the head, also one whose images gave no
foreground RoI: with 0 RoIs the losses are 0 but still connected to every parameter (zero
gradients), so the gradient all-reduce sees the same parameters on every process. A synchronised
readout norm (SyncBN) takes part in its all-reduce with the empty batch; on a CPU (gloo) it is
Detectron2's ``NaiveSyncBatchNorm(stats_mode="N")``, see :func:`readout_norm_for_device`.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import detectron2.utils.comm as comm
import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    BaseMaskRCNNHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage, get_event_storage
from torch import Tensor, nn

from ...recurrent import (
    ConvLSTMCell,
    EngineSpec,
    MaskHeadHGRUCell,
    NonFiniteStateError,
    RecurrenceDiagnostics,
    RecurrentEngine,
    spec_from_node,
)
from ...recurrent.base import NONLINEARITIES

__all__ = [
    "CELLS",
    "CELL_NORMS",
    "READOUT_NORMS",
    "RecurrentMaskHead",
    "RecurrentMaskRCNNConvUpsampleHead",
    "build_recurrent_engine",
    "check_head_keys",
    "head_spec",
    "readout_norm_for_device",
]

# The head's own keys of MODEL.ROI_MASK_HEAD.RECURRENT (the engine's are EngineSpec's).
CELLS = ("hgru", "convlstm")
# Norms allowed *inside* the cell: it is double-differentiated by the LCP and must be a per-ROI map.
CELL_NORMS = ("GN", "IN", "none", "")  # "none": off ("" accepted, as Detectron2 spells it)
# Norms Detectron2's get_norm accepts for the readout (outside the recurrence, so any of them).
READOUT_NORMS = (
    "none",
    "",
    "BN",
    "SyncBN",
    "naiveSyncBN",
    "naiveSyncBN_N",
    "nnSyncBN",
    "FrozenBN",
    "GN",
)
_BATCH_NORMS = (
    "BN",
    "SyncBN",
    "naiveSyncBN",
    "naiveSyncBN_N",
    "nnSyncBN",
    "NaiveSyncBN",
    "FrozenBN",
)

SCALAR_PREFIX = "crbp/"
# Detectron2 v0.6 get_norm names that build torch.nn.SyncBatchNorm, which synchronises CUDA (not
# CPU) tensors, and the variant used instead on other devices: Detectron2's NaiveSyncBatchNorm
# weighting each process by its RoI count (the same statistics; an empty process is allowed).
CUDA_ONLY_SYNC_NORMS = ("SyncBN", "nnSyncBN")
GLOO_SYNC_NORM = "naiveSyncBN_N"
# Readout norms whose training forward is a collective (every process must call it alike).
SYNC_NORMS = CUDA_ONLY_SYNC_NORMS + ("naiveSyncBN", GLOO_SYNC_NORM)

logger = logging.getLogger("detectron2")  # into the run's log.txt


def readout_norm_for_device(norm: str, device) -> str:
    """The :func:`detectron2.layers.get_norm` name to build for ``READOUT_NORM`` ``norm`` on
    ``device`` (``MODEL.DEVICE``).

    ``"SyncBN"`` / ``"nnSyncBN"`` (``torch.nn.SyncBatchNorm``) raise on CPU tensors once a process
    group exists, so off CUDA they become ``"naiveSyncBN_N"``: the batch statistics of all
    processes' RoIs together (14 x 14 each), also with 0 RoIs on a process, over gloo. In one
    process both are plain BatchNorm, so a single-process CPU run computes the same as before.
    Every other name is returned unchanged.
    """
    if norm not in CUDA_ONLY_SYNC_NORMS or torch.device(device).type == "cuda":
        return norm
    if comm.get_world_size() > 1:
        if comm.is_main_process():
            logger.info(
                "READOUT_NORM %r is torch.nn.SyncBatchNorm, which synchronises CUDA tensors only; "
                "on this %s multi-process run the readout uses %r instead (Detectron2's "
                "NaiveSyncBatchNorm, stats_mode 'N': the same statistics over all processes)",
                norm,
                device,
                GLOO_SYNC_NORM,
            )
    return GLOO_SYNC_NORM


NODE = "cfg.MODEL.ROI_MASK_HEAD.RECURRENT"


def _fail(key: str, value, why: str) -> None:
    raise ValueError(f"{NODE}.{key} = {value!r}: {why}")


def _check_int(node, key: str, minimum: int) -> None:
    value = node[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(key, value, f"must be an integer >= {minimum}")


def _check_choice(node, key: str, choices) -> None:
    if node[key] not in choices:
        _fail(key, node[key], f"unknown value; choose one of {tuple(choices)}")


def check_head_keys(cfg) -> None:
    """Raise ``ValueError`` naming the key if the head's own keys of
    ``MODEL.ROI_MASK_HEAD.RECURRENT`` (the cell's and the readout's) are invalid. The engine's keys
    are checked by :func:`~crbp_d2.recurrent.spec_from_node`."""
    head = cfg.MODEL.ROI_MASK_HEAD
    node = head.RECURRENT
    _check_choice(node, "CELL", CELLS)
    _check_choice(node, "NONLINEARITY", tuple(NONLINEARITIES))
    _check_int(node, "KERNEL_SIZE", 1)
    if node.KERNEL_SIZE % 2 == 0:
        _fail("KERNEL_SIZE", node.KERNEL_SIZE, "must be odd (same padding)")
    if node.CELL_NORM in _BATCH_NORMS:
        _fail(
            "CELL_NORM",
            node.CELL_NORM,
            "batch norms cannot be inside the recurrent cell: SyncBN has no double backward (the "
            "LCP needs one), FrozenBN is not a norm of the state, and BN's batch statistics mix "
            "all RoIs of the batch into every RoI's map (and change between train and test). Use "
            "'GN' (the paper), 'IN' or 'none'; BN/SyncBN belong in READOUT_NORM",
        )
    _check_choice(node, "CELL_NORM", CELL_NORMS)
    _check_choice(node, "READOUT_NORM", READOUT_NORMS)
    _check_int(node, "CELL_NORM_GROUPS", 1)
    if node.CELL == "hgru" and node.CELL_NORM == "GN" and head.CONV_DIM % node.CELL_NORM_GROUPS:
        _fail(
            "CELL_NORM_GROUPS",
            node.CELL_NORM_GROUPS,
            f"MODEL.ROI_MASK_HEAD.CONV_DIM ({head.CONV_DIM}) must be divisible by it",
        )
    if node.READOUT_NORM == "GN" and head.CONV_DIM % 32:
        _fail(
            "READOUT_NORM",
            "GN",
            f"Detectron2's GN uses 32 groups; MODEL.ROI_MASK_HEAD.CONV_DIM ({head.CONV_DIM}) "
            "is not divisible by 32",
        )


def head_spec(cfg) -> EngineSpec:
    """The engine spec of ``cfg.MODEL.ROI_MASK_HEAD.RECURRENT``, with the node read once: the
    engine's keys by :func:`~crbp_d2.recurrent.spec_from_node`, the head's own keys by
    :func:`check_head_keys` (each raises ``ValueError`` naming the key). What both the head and
    :func:`crbp_d2.rfpn.config.validate_crbp_config` call, so that the way from the YAML to the
    engine does not climb back into the config module (``tests/test_yaml_to_engine.py``)."""
    if "RECURRENT" not in cfg.MODEL.ROI_MASK_HEAD:
        raise ValueError(
            "the config has no MODEL.ROI_MASK_HEAD.RECURRENT node: call "
            "crbp_d2.rfpn.config.add_crbp_config(cfg) before merging the config file"
        )
    spec = spec_from_node(cfg.MODEL.ROI_MASK_HEAD.RECURRENT, NODE)
    check_head_keys(cfg)
    return spec


def build_recurrent_engine(cfg, input_channels: int) -> RecurrentEngine:
    """The cell and engine described by ``cfg.MODEL.ROI_MASK_HEAD.RECURRENT`` (validated).

    Args:
        input_channels: channels of the RoI features (the FPN width).
    """
    spec = head_spec(cfg)
    node = cfg.MODEL.ROI_MASK_HEAD.RECURRENT
    hidden = cfg.MODEL.ROI_MASK_HEAD.CONV_DIM
    if node.CELL == "hgru":
        if input_channels != hidden:
            raise ValueError(
                f"the hGRU's state and drive have the same width, but the RoI features have "
                f"{input_channels} channels and MODEL.ROI_MASK_HEAD.CONV_DIM is {hidden}; set "
                f"CONV_DIM {input_channels} (the paper uses 256 = MODEL.FPN.OUT_CHANNELS)"
            )
        cell: nn.Module = MaskHeadHGRUCell(
            channels=hidden,
            kernel_size=node.KERNEL_SIZE,
            timesteps=spec.steps,
            gala=node.GALA,
            norm=node.CELL_NORM,
            norm_groups=node.CELL_NORM_GROUPS,
            nonlinearity=node.NONLINEARITY,
            less_softplus=node.LESS_SOFTPLUS,
            chronos_log=node.CHRONOS_LOG,
            authors_init=node.AUTHORS_INIT,
        )
    else:
        cell = ConvLSTMCell(input_channels, hidden, node.KERNEL_SIZE, implicit_state="joint")
    return RecurrentEngine.from_spec(cell, spec)


def _put_scalars(values: Dict[str, float]) -> None:
    """Send ``values`` to the current EventStorage (TensorBoard, metrics.json), if any."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage active (e.g. a bare backward in a script)
        return
    storage.put_scalars(**{SCALAR_PREFIX + k: v for k, v in values.items()}, smoothing_hint=True)


def _iteration() -> Optional[int]:
    try:
        return get_event_storage().iter
    except AssertionError:
        return None


def _put_backward_scalars(diagnostics: RecurrenceDiagnostics) -> None:
    if diagnostics.backward_scalars():
        _put_scalars(diagnostics.backward_scalars())


@ROI_MASK_HEAD_REGISTRY.register()
class RecurrentMaskHead(BaseMaskRCNNHead):
    """Recurrent (R-FPN) mask head of C-RBP, Linsley et al. NeurIPS 2020.

    Attributes:
        engine: the :class:`~crbp_d2.recurrent.RecurrentEngine` (``engine.cell`` is the cell;
            ``engine.test_steps`` the inference steps, which the timestep sweep changes).
        return_timecourse: at inference, also store ``pred_masks_steps`` (R, T, 28, 28), the
            predicted-class mask probability after every step t = 1..T, on the instances.
        last_diagnostics: the engine's diagnostics of the last call (dict of floats).
    """

    @configurable
    def __init__(
        self,
        *,
        engine: RecurrentEngine,
        num_classes: int,
        readout_norm: str = "",
        lcp_weight: float = 1e-3,
        **kwargs,
    ) -> None:
        """
        Args:
            engine: the recurrence; its cell's ``hidden_channels`` is the readout width.
            num_classes: foreground classes (1 for class-agnostic masks).
            readout_norm: norm on the final state, a :func:`detectron2.layers.get_norm` name.
            lcp_weight: weight of ``loss_lcp`` (LCP_WEIGHT, the authors' XI).
            kwargs: ``loss_weight``, ``vis_period`` of :class:`BaseMaskRCNNHead`.
        """
        super().__init__(**kwargs)
        if lcp_weight < 0:
            raise ValueError(f"lcp_weight must be >= 0, got {lcp_weight}")
        width = engine.cell.hidden_channels
        self.engine = engine
        self.lcp_weight = float(lcp_weight)
        # "none" is off, as in the Pathfinder config; Detectron2's get_norm spells it ""
        self.readout_norm = get_norm("" if readout_norm == "none" else readout_norm, width)
        self.readout_norm = self.readout_norm or nn.Identity()
        self._synchronised_readout = readout_norm in SYNC_NORMS
        self.deconv = ConvTranspose2d(width, width, kernel_size=2, stride=2, padding=0)
        self.predictor = Conv2d(width, num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.deconv)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)
        self.return_timecourse = False
        self.last_diagnostics: Dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        ret = super().from_config(cfg, input_shape)
        engine = build_recurrent_engine(cfg, input_shape.channels)  # validates the config
        num_classes = (
            1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        )
        ret.update(
            engine=engine,
            num_classes=num_classes,
            readout_norm=readout_norm_for_device(
                cfg.MODEL.ROI_MASK_HEAD.RECURRENT.READOUT_NORM, cfg.MODEL.DEVICE
            ),
            lcp_weight=engine.spec.lcp_weight,
        )
        return ret

    # -- pieces ---------------------------------------------------------------------------------

    @property
    def test_steps(self) -> int:
        """Steps run at inference (``engine.test_steps``)."""
        return self.engine.test_steps

    @test_steps.setter
    def test_steps(self, steps: int) -> None:
        self.engine.test_steps = steps  # validated by the engine's spec

    def readout(self, h: Tensor) -> Tensor:
        """(R, C, 14, 14) state -> (R, num_classes, 28, 28) mask logits."""
        return self.predictor(torch.relu(self.deconv(self.readout_norm(h))))

    def layers(self, x: Tensor) -> Tensor:
        """(R, C, 14, 14) RoI features -> (R, num_classes, 28, 28) mask logits (no losses)."""
        out = self.engine(x)
        return self.readout(self.engine.cell.output(out.state))

    # -- forward --------------------------------------------------------------------------------

    def forward(self, x: Tensor, instances: List[Instances]):
        """
        Args:
            x: (R, C, 14, 14) RoI features of all images.
            instances: per-image Instances (training: proposals with gt fields; inference:
                detections with ``pred_classes``), R in total.

        Returns:
            Training: ``{"loss_mask", "loss_lcp"}`` (``loss_lcp`` only for the LCP_METHODS).
            Inference: ``instances`` with ``pred_masks`` (and ``pred_masks_steps``).
        """
        if self.training:
            return self._forward_train(x, instances)
        return self._forward_inference(x, instances)

    def _forward_train(self, x: Tensor, instances: List[Instances]) -> Dict[str, Tensor]:
        try:
            out = self.engine(x)
        except NonFiniteStateError as error:  # as Detectron2 reports a non-finite loss
            raise FloatingPointError(f"mask head at iteration {_iteration()}: {error}") from None
        out.after_backward(_put_backward_scalars)  # Neumann stats are known only after backward
        logits = self.readout(self.engine.cell.output(out.state))
        losses = {
            "loss_mask": mask_rcnn_loss(logits, instances, self.vis_period) * self.loss_weight
        }
        if out.lcp is not None:
            losses["loss_lcp"] = self.lcp_weight * out.lcp
        scalars = out.diagnostics.scalars()
        scalars["rois"] = float(x.shape[0])
        scalars.update(self._gradient_fidelity(x, instances))
        self.last_diagnostics = scalars
        _put_scalars(scalars)
        return losses

    def _gradient_fidelity(self, x: Tensor, instances: List[Instances]) -> Dict[str, float]:
        """Every ``FIDELITY_PERIOD`` iterations: the configured method's gradient of the mask loss
        against the exact one (:meth:`RecurrentEngine.gradient_fidelity`), else nothing."""
        period = self.engine.spec.fidelity_period
        try:
            iteration = get_event_storage().iter
        except AssertionError:  # no training loop around
            return {}
        if period <= 0 or iteration % period:
            return {}
        # A synchronised readout norm all-reduces in the loss below: with several processes each
        # must run it, also one with 0 RoIs (whose gradients are zero and not reported).
        if x.shape[0] == 0 and not (self._synchronised_readout and comm.get_world_size() > 1):
            return {}

        def mask_loss(state: Tensor) -> Tensor:
            return mask_rcnn_loss(self.readout(self.engine.cell.output(state)), instances, 0)

        with EventStorage(iteration):  # mask_rcnn_loss's own scalars stay out of the real log
            fidelity = self.engine.gradient_fidelity(x, mask_loss)
        if x.shape[0] == 0:
            return {}
        return {k: v for k, v in fidelity.items() if k.startswith("grad_")}

    def _forward_inference(self, x: Tensor, instances: List[Instances]) -> List[Instances]:
        out = self.engine(x, record_states=self.return_timecourse)
        self.last_diagnostics = out.diagnostics.scalars()
        logits = self.readout(self.engine.cell.output(out.state))
        mask_rcnn_inference(logits, instances)
        if self.return_timecourse:
            steps = [
                self._class_probabilities(self.readout(self.engine.cell.output(s)), instances)
                for s in out.states
            ]
            per_step = torch.stack(steps, dim=1)  # (R, T, 28, 28)
            for inst, probs in zip(instances, per_step.split([len(i) for i in instances])):
                inst.pred_masks_steps = probs
        return instances

    @staticmethod
    def _class_probabilities(logits: Tensor, instances: List[Instances]) -> Tensor:
        """(R, K, 28, 28) logits -> (R, 28, 28) sigmoid of the predicted class (as pred_masks)."""
        if logits.shape[1] == 1:
            return logits[:, 0].sigmoid()
        classes = (
            cat([i.pred_classes for i in instances]) if instances else logits.new_zeros(0).long()
        )
        return logits[torch.arange(logits.shape[0], device=logits.device), classes].sigmoid()


@ROI_MASK_HEAD_REGISTRY.register()
class RecurrentMaskRCNNConvUpsampleHead(RecurrentMaskHead):
    """Alias of :class:`RecurrentMaskHead` under the name used by the authors' configs."""
