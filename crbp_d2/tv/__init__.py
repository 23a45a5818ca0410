"""The recurrent mask head in torchvision's Mask R-CNN (``pip install 'crbp-d2[torchvision]'``).

No Detectron2 import anywhere here. Named ``tv`` so as not to read as (or shadow) torchvision.

- :mod:`.mask_head`: :func:`use_recurrent_mask_head` puts the mask-head hGRU (any engine method)
  into a :class:`torchvision.models.detection.MaskRCNN`, with ``loss_lcp`` in the loss dict and
  the per-step readout (``masks_steps``) at inference; :class:`FixedStepMaskHead` for export.
- :mod:`.models`: a small ResNet-18-FPN Mask R-CNN for CPU training from random init.
- :mod:`.data`: COCO-format instance data (pycocotools) and the synthetic shapes set.
- :mod:`.evaluate`: COCO mask / box AP with pycocotools.

Example (any torchvision Mask R-CNN; the losses then include ``loss_lcp``):

>>> from torchvision.models.detection import maskrcnn_resnet50_fpn
>>> from crbp_d2.tv import build_mask_head_engine, use_recurrent_mask_head
>>> model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5)
>>> model = use_recurrent_mask_head(model, build_mask_head_engine(width=256, steps=20))
>>> type(model.roi_heads).__name__, model.roi_heads.mask_head.engine.spec.method
('RecurrentRoIHeads', 'crbp')
"""

from .._extras import require_extra

require_extra("torchvision", "crbp_d2.tv")

from .mask_head import (  # noqa: E402
    FixedStepMaskHead,
    MaskReadout,
    RecurrentMaskFeatures,
    RecurrentRoIHeads,
    build_mask_head_engine,
    use_recurrent_mask_head,
)
from .models import HEADS, small_maskrcnn  # noqa: E402

__all__ = [
    "FixedStepMaskHead",
    "HEADS",
    "MaskReadout",
    "RecurrentMaskFeatures",
    "RecurrentRoIHeads",
    "build_mask_head_engine",
    "small_maskrcnn",
    "use_recurrent_mask_head",
]
