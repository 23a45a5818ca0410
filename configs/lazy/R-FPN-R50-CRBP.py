# R-FPN R-50, C-RBP with 20 steps, lambda 0.9 (the paper's model); the LazyConfig twin of
# configs/R-FPN-R50-CRBP.yaml. The mask head's keys are those of the yacs node
# MODEL.ROI_MASK_HEAD.RECURRENT with the defaults of crbp_d2.rfpn.config.add_crbp_config (read from
# there, not copied): override one as model.roi_heads.mask_head.engine.TIMESTEPS=10.
from crbp_d2.rfpn.lazy_config import build_engine_from_keys, recurrent_defaults
from crbp_d2.rfpn.modeling import RecurrentMaskHead
from crbp_d2.rfpn.modeling.recurrent_mask_head import readout_norm_for_device

from detectron2.config import LazyCall as L

from .base_panoptic_fpn import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.roi_heads.mask_head = L(RecurrentMaskHead)(
    # the hGRU runs on the pooled RoI features: its width is the FPN's
    engine=L(build_engine_from_keys)(width="${....backbone.out_channels}", **recurrent_defaults()),
    num_classes="${..num_classes}",
    # SyncBN off CUDA becomes Detectron2's NaiveSyncBatchNorm, as in the yacs head (MODEL.DEVICE)
    readout_norm=L(readout_norm_for_device)(
        norm="${..engine.READOUT_NORM}", device="${train.device}"
    ),
    lcp_weight="${.engine.LCP_WEIGHT}",
)

train.output_dir = "./output/lazy/R-FPN-R50-CRBP"
