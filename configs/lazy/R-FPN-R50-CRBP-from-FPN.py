# R-FPN R-50 C-RBP started from Detectron2's model-zoo Panoptic FPN R-50 (3x): everything but the
# mask head is loaded from the checkpoint (its 4-conv mask head is skipped), the recurrent head
# starts fresh and is the only part trained (train.train_only_head; set it False to fine-tune the
# whole model). The LazyConfig twin of configs/R-FPN-R50-CRBP-from-FPN.yaml. The schedule is the
# model zoo's 1x (batch 16, LR 0.02, 90k iterations), a starting point that has not been tuned.
import crbp_d2.rfpn  # noqa: F401  (the Detectron2 front-end: its shim, the head, the datasets)

from detectron2.config import LazyConfig

model, dataloader, optimizer, lr_multiplier, train = LazyConfig.load_rel(
    "R-FPN-R50-CRBP.py", ("model", "dataloader", "optimizer", "lr_multiplier", "train")
)

train.init_checkpoint = (
    "detectron2://COCO-PanopticSegmentation/panoptic_fpn_R_50_3x/139514569/model_final_c10459.pkl"
)
train.train_only_head = True
dataloader.train.total_batch_size = 16
optimizer.lr = 0.02
train.output_dir = "./output/lazy/R-FPN-R50-CRBP-from-FPN"
