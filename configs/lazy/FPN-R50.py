# Feedforward baseline: Panoptic FPN R-50 with Detectron2's 4-conv mask head on the same schedule
# as R-FPN; the LazyConfig twin of configs/FPN-R50.yaml.
from .base_panoptic_fpn import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.output_dir = "./output/lazy/FPN-R50"
