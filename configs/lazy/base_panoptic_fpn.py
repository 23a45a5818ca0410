# Panoptic FPN R-50 (feedforward), from Detectron2's own LazyConfig pieces (its model zoo's
# common/models/panoptic_fpn.py, common/data/coco_panoptic_separated.py, common/optim.py,
# common/coco_schedule.py, common/train.py), set to what configs/Base-PanopticFPN.yaml and
# configs/FPN-R50.yaml say: the authors' R-FPN schedule (batch 40, LR 0.05, 90k iterations, LR x0.1
# at 60k and 80k, 1000 warm-up iterations), ImageNet R-50 weights, res2 and the stem frozen
# (MODEL.BACKBONE.FREEZE_AT 2), and the project's evaluators (PQ through hotcoco, COCO AP with
# pycocotools' COCOeval, semantic mIoU). The shared base of configs/lazy/FPN-R50.py and
# configs/lazy/R-FPN-R50-CRBP.py; tests/test_d2_lazy.py checks that they build the same models
# as the yacs configs. Train / evaluate with tools/lazyconfig_train_net.py.
import crbp_d2.rfpn  # noqa: F401  (the Detectron2 front-end: its shim, the head, the datasets)
from crbp_d2.rfpn.evaluation import HotcocoPanopticEvaluator

from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.model_zoo import get_config

model = get_config("common/models/panoptic_fpn.py").model
dataloader = get_config("common/data/coco_panoptic_separated.py").dataloader
optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x  # 60k / 80k of 90k
train = get_config("common/train.py").train

model.backbone.bottom_up.freeze_at = 2  # the yacs default MODEL.BACKBONE.FREEZE_AT

dataloader.train.total_batch_size = 40
# PQ via hotcoco (Detectron2's COCOPanopticEvaluator needs panopticapi, not on PyPI); COCOeval
# without Detectron2's compiled fast implementation.
dataloader.evaluator = [
    L(COCOEvaluator)(
        dataset_name="${...test.dataset.names}",
        use_fast_impl=False,
        output_dir="${train.output_dir}/inference",
    ),
    L(SemSegEvaluator)(
        dataset_name="${...test.dataset.names}", output_dir="${train.output_dir}/inference"
    ),
    L(HotcocoPanopticEvaluator)(
        dataset_name="${...test.dataset.names}", output_dir="${train.output_dir}/inference"
    ),
]

optimizer.lr = 0.05  # SGD, momentum 0.9, weight decay 1e-4 (0 on norm layers), as the yacs base

train.max_iter = 90000
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.eval_period = 0  # as TEST.EVAL_PERIOD 0: evaluate once, after the last iteration
train.seed = -1  # as SEED -1: a random seed
# Freeze everything but the mask head (the yacs SOLVER.TRAIN_ONLY_HEAD).
train.train_only_head = False
