# Smallest end-to-end run of the LazyConfig path, CPU, for tests/test_d2_lazy.py and the README:
# configs/lazy/R-FPN-R50-CRBP.py on the 64-image synthetic panoptic set (generated on first use)
# at 64 px, 1 image per step, 2 steps from random init (BatchNorm instead of FrozenBN in the
# backbone, nothing frozen), 3 recurrent steps, 3 Neumann terms, GroupNorm readout, then the
# evaluation (PQ / COCO AP / mIoU) on the 16 validation images. Numbers from it mean nothing; it
# checks that everything connects (the twin of configs/quick/R-FPN-R50-CRBP-synthetic-test.yaml).
import crbp_d2.rfpn  # noqa: F401  (the Detectron2 front-end: its shim, the head, the datasets)

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig

model, dataloader, optimizer, lr_multiplier, train = LazyConfig.load_rel(
    "../R-FPN-R50-CRBP.py", ("model", "dataloader", "optimizer", "lr_multiplier", "train")
)

# (names of helper variables start with "_": LazyConfig.load keeps every other top-level config)
_bottom_up = model.backbone.bottom_up
_bottom_up.stem.norm = _bottom_up.stages.norm = "GN"  # random init: GN, same in train and test
_bottom_up.freeze_at = 0
model.proposal_generator.pre_nms_topk = (200, 100)
model.proposal_generator.post_nms_topk = (100, 50)
model.roi_heads.num_classes = 4  # circle, square, triangle, star
model.roi_heads.batch_size_per_image = 32
model.roi_heads.box_predictor.test_score_thresh = 0.0  # keep detections, so that AP is defined
model.roi_heads.box_predictor.test_topk_per_image = 20
model.sem_seg_head.num_classes = 4  # "things" + sky / grass / wall
_engine = model.roi_heads.mask_head.engine
_engine.TIMESTEPS = 3
_engine.NEUMANN_STEPS = 3
_engine.READOUT_NORM = "GN"  # SyncBN is BN on one CPU process; GN does not depend on the batch

dataloader.train.dataset.names = "synthetic_panoptic_train_separated"
dataloader.test.dataset.names = "synthetic_panoptic_val_separated"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(64,), max_size=96, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=64, max_size=96)]
dataloader.train.total_batch_size = 1
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0

optimizer.lr = 0.001
lr_multiplier.warmup_length = 0.5  # of the 2 iterations

train.device = "cpu"
train.init_checkpoint = ""
train.max_iter = 2
train.log_period = 1
train.seed = 0
train.output_dir = "./output/lazy/R-FPN-R50-CRBP-synthetic-test"
