"""A small torchvision Mask R-CNN for CPU training from random init, recurrent or feedforward.

The same recipe as the Detectron2 quick runs (``configs/quick/Base-RFPN-R18-synthetic.yaml``):
ResNet-18 with trainable BatchNorm, a 64-channel FPN, two square anchors per level matched to the
synthetic shapes, ~128 px input, 16 sampled RoIs per image (half positive), a 256-wide box head.
The mask head is either the recurrent one (:func:`~crbp_d2.tv.mask_head.use_recurrent_mask_head`)
or torchvision's 4-conv head at the same width (the feedforward twin).
"""

from __future__ import annotations

from typing import Any, Dict

from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .mask_head import build_mask_head_engine, use_recurrent_mask_head

__all__ = ["HEADS", "small_maskrcnn"]

HEADS = ("recurrent", "conv")


def small_maskrcnn(
    num_classes: int,
    head: str = "recurrent",
    width: int = 64,
    min_size: int = 128,
    max_size: int = 256,
    **engine: Any,
) -> MaskRCNN:
    """ResNet-18-FPN Mask R-CNN from random init.

    Args:
        num_classes: including background.
        head: ``recurrent`` (the hGRU head; ``engine`` keywords go to
            :func:`~crbp_d2.tv.mask_head.build_mask_head_engine`) or ``conv`` (torchvision's
            4 x 3x3 conv head, ``width`` channels, and its deconv predictor).
        width: FPN channels (= the hGRU's state width).
    """
    if head not in HEADS:
        raise ValueError(f"head = {head!r}: unknown; choose one of {HEADS}")
    trunk = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = BackboneWithFPN(
        trunk,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512],
        out_channels=width,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = AnchorGenerator(
        sizes=((16, 24), (32, 48), (64, 96), (128, 192), (256, 384)),
        aspect_ratios=((1.0, 1.0),) * 5,
    )
    fc = 256
    settings: Dict[str, Any] = dict(
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=16,
        box_positive_fraction=0.5,
        box_head=TwoMLPHead(width * 7 * 7, fc),
        box_predictor=FastRCNNPredictor(fc, num_classes),
    )
    if head == "conv":
        settings.update(
            mask_head=MaskRCNNHeads(width, [width] * 4, dilation=1),
            mask_predictor=MaskRCNNPredictor(width, width, num_classes),
        )
        return MaskRCNN(backbone, num_classes=None, **settings)
    # placeholders: use_recurrent_mask_head replaces both slots
    model = MaskRCNN(
        backbone,
        num_classes=None,
        mask_head=nn.Identity(),
        mask_predictor=nn.Identity(),
        **settings,
    )
    return use_recurrent_mask_head(model, build_mask_head_engine(width, **engine), num_classes)
