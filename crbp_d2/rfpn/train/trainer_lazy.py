"""Training and evaluating with LazyConfig files (``configs/lazy/*.py``), following Detectron2's
``tools/lazyconfig_train_net.py``: a config defines ``model``, ``dataloader.{train,test}``,
``dataloader.evaluator``, ``optimizer``, ``lr_multiplier`` and ``train`` (Detectron2's
``common/train.py`` keys: ``output_dir``, ``init_checkpoint``, ``max_iter``, ``amp``, ``ddp``,
``checkpointer``, ``eval_period``, ``log_period``, ``device``), and ``key=value`` overrides
change it. What differs from Detectron2's script:

* weights are loaded with :class:`~crbp_d2.rfpn.checkpoint.RFPNCheckpointer` (a feedforward Panoptic
  FPN checkpoint loads into R-FPN with a fresh recurrent head; one summary of the keys);
* ``train.train_only_head`` (the yacs ``SOLVER.TRAIN_ONLY_HEAD``) freezes
  everything but the mask head before the optimizer is built;
* an override of a key the config does not have is an error (``+key=value`` adds one on
  purpose), dataset names and class counts are checked before anything is built;
* ``--eval-only`` appends its results to ``train.output_dir/metrics.json``, as the yacs program.
* ``--resume`` continues exactly, as the yacs ``Trainer``: Detectron2's
  ``build_detection_train_loader`` in ``dataloader.train`` is swapped for the resumable loader
  (same arguments), each checkpoint has a ``resume`` entry (data position, every process's random
  state), evaluation leaves the random state unchanged, and the ``metrics.json`` rows of
  iterations done again are dropped.

:func:`train_or_evaluate_lazy` is what ``launch`` runs in every worker
(``crbp_d2.cli.lazyconfig_train_net``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
from typing import Any, Callable, Dict, List, Tuple

import detectron2.utils.comm as comm
from detectron2.config import LazyConfig, instantiate
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_writers,
    hooks,
)
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ...utils.rng import preserved_rng
from ..checkpoint import RFPNCheckpointer, check_weights_cover_model
from ..data import check_dataset_name
from ..data.resumable import DatasetItemError, EvaluationItemError, ResumableTrainLoader
from ..lazy_config import check_lazy_overrides
from ..modeling.freeze import freeze_all_but_mask_head
from .launch import create_ddp_model
from .trainer import (
    _append_metrics,
    _GatherRNGStates,
    default_setup_plain,
    drop_redone_metrics,
    restore_rng_states,
    rng_states,
    save_before_stopping,
    stop_on_non_finite_loss,
)

__all__ = [
    "REQUIRED_KEYS",
    "build_lazy_config",
    "LAZY_VALUE_CHECKS",
    "check_lazy_datasets",
    "check_lazy_values",
    "do_test",
    "do_train",
    "train_or_evaluate_lazy",
]

logger = logging.getLogger("detectron2")

REQUIRED_KEYS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")


def _dataset_names(names: Any) -> List[str]:
    if isinstance(names, str):
        return [names]
    return [str(n) for n in names]


def check_lazy_datasets(cfg: DictConfig) -> None:
    """Raise ``KeyError`` for an unregistered dataset name in ``dataloader.{train,test}`` and
    ``ValueError`` if ``model.roi_heads.num_classes`` / ``model.sem_seg_head.num_classes`` do not
    match a panoptic dataset's ``thing_classes`` / ``stuff_classes``."""
    heads = (
        ("model.roi_heads.num_classes", "thing_classes"),
        ("model.sem_seg_head.num_classes", "stuff_classes"),
    )
    for split in ("train", "test"):
        loader = cfg.dataloader.get(split)
        names = OmegaConf.select(loader, "dataset.names") if loader is not None else None
        if names is None:
            continue
        for name in _dataset_names(names):
            check_dataset_name(name, f"dataloader.{split}.dataset.names")
            metadata = MetadataCatalog.get(name)
            if metadata.get("evaluator_type") != "coco_panoptic_seg":
                continue
            for key, field in heads:
                value = OmegaConf.select(cfg, key)
                classes = metadata.get(field)
                if value is not None and classes is not None and value != len(classes):
                    raise ValueError(
                        f"{key} is {value} but dataset {name!r} has {len(classes)} {field} "
                        f"({', '.join(classes)}); override {key}={len(classes)}"
                    )


ENGINE_KEY = "model.roi_heads.mask_head.engine"


def check_lazy_engine(cfg: DictConfig) -> None:
    """Build the mask head's recurrent engine node (``model.roi_heads.mask_head.engine``, made by
    :func:`crbp_d2.rfpn.lazy_config.build_engine_from_keys`) once before training, so that an
    invalid value is one ``ValueError`` naming the lazy key
    (``model.roi_heads.mask_head.engine.TIMESTEPS = -1: must be an integer >= 1``), not a
    traceback from inside the model's instantiation with the
    yacs key name."""
    from ..lazy_config import build_engine_from_keys

    node: Any = cfg
    for part in ENGINE_KEY.split("."):
        node = node.get(part) if isinstance(node, DictConfig) else None
        if node is None:
            return
    if not _is_target(node, build_engine_from_keys):
        return
    keys = {k: node[k] for k in node.keys() if isinstance(k, str) and k.isupper()}
    try:
        build_engine_from_keys(32, **keys)
    except (ValueError, KeyError) as error:
        message = str(error.args[0] if error.args else error)
        for yacs_prefix in ("cfg.MODEL.ROI_MASK_HEAD.RECURRENT.", "MODEL.ROI_MASK_HEAD.RECURRENT."):
            message = message.replace(yacs_prefix, ENGINE_KEY + ".")
        raise type(error)(message) from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# lazy key -> (test, what it must be); a key the config does not have, or that holds a LazyCall
# node or an interpolation, is not checked
LAZY_VALUE_CHECKS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "optimizer.lr": (lambda v: _number(v) and v > 0, "a number > 0"),
    "optimizer.momentum": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "optimizer.weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "lr_multiplier.warmup_length": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "lr_multiplier.warmup_factor": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "dataloader.train.total_batch_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "dataloader.train.num_workers": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "dataloader.train.aspect_ratio_grouping": (lambda v: isinstance(v, bool), "true or false"),
    "dataloader.test.num_workers": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "dataloader.test.batch_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "train.max_iter": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "train.eval_period": (lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: at the end)"),
    "train.log_period": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "train.checkpointer.period": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "train.checkpointer.max_to_keep": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "train.amp.enabled": (lambda v: isinstance(v, bool), "true or false"),
    "train.seed": (lambda v: _integer(v), "an integer (negative: random)"),
    "model.roi_heads.num_classes": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "model.sem_seg_head.num_classes": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
}


def check_lazy_values(cfg: DictConfig, processes: int = 1) -> None:
    """Check the values of :data:`LAZY_VALUE_CHECKS` and build the optimizer (on one dummy
    parameter) and ``lr_multiplier`` once, so that a bad value outside the engine node is one
    ``ValueError`` naming the lazy key (``optimizer.lr = 'abc': must be a number > 0``) before
    anything starts, not a traceback from a worker (or a yacs key name: ``SOLVER.*``)."""
    import torch

    for key, (valid, what) in LAZY_VALUE_CHECKS.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None or isinstance(value, DictConfig) or isinstance(value, ListConfig):
            continue
        if not valid(value):
            raise ValueError(f"{key} = {value!r}: must be {what}")
    batch = OmegaConf.select(cfg, "dataloader.train.total_batch_size", default=None)
    if _integer(batch) and batch % max(processes, 1):
        raise ValueError(
            f"dataloader.train.total_batch_size = {batch}: must be divisible by the number of "
            f"processes ({processes}: --num-gpus x --num-machines)"
        )
    optimizer = cfg.get("optimizer")
    if isinstance(optimizer, DictConfig) and "_target_" in optimizer:
        target = optimizer._target_
        target = locate(target) if isinstance(target, str) else target
        name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}"
        kwargs = {k: v for k, v in optimizer.items() if k not in ("_target_", "params")}
        kwargs = OmegaConf.to_container(OmegaConf.create(kwargs), resolve=True)
        try:  # the optimizer's own checks (betas, eps, nesterov, an unknown argument)
            target([torch.nn.Parameter(torch.zeros(1))], **kwargs)
        except (TypeError, ValueError, KeyError, RuntimeError) as error:
            raise ValueError(f"optimizer ({name}): {_first_line(error)}") from None
    if isinstance(cfg.get("lr_multiplier"), DictConfig):
        try:
            instantiate(cfg.lr_multiplier)
        except (TypeError, ValueError, KeyError, AssertionError) as error:
            raise ValueError(f"lr_multiplier: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no detail'}"


def build_lazy_config(args: argparse.Namespace) -> DictConfig:
    """The LazyConfig of ``args.config_file`` with the ``args.opts`` overrides, after every check
    that can fail before training starts (the file, the required keys, unknown override keys,
    dataset names and class counts, a missing ``train.init_checkpoint`` file)."""
    from hydra.errors import OverrideParseException

    path = args.config_file
    if not path:
        raise ValueError("--config-file is required (a LazyConfig .py file, e.g. configs/lazy/)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if not path.endswith(".py"):
        raise ValueError(
            f"{path}: tools/lazyconfig_train_net.py takes LazyConfig .py files; for a yacs "
            ".yaml config use tools/train_net.py"
        )
    cfg = LazyConfig.load(path)
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        needed = ", ".join(REQUIRED_KEYS)
        raise KeyError(f"config file {path} defines no {', '.join(missing)} (needs {needed})")
    check_lazy_overrides(cfg, args.opts)
    try:
        cfg = LazyConfig.apply_overrides(cfg, args.opts)
    except OverrideParseException as error:
        raise ValueError(f"cannot parse the config overrides {args.opts}: {error}") from None
    check_lazy_datasets(cfg)
    check_lazy_engine(cfg)
    processes = getattr(args, "num_gpus", 1) * getattr(args, "num_machines", 1)
    check_lazy_values(cfg, processes if not args.eval_only else 1)
    weights = cfg.train.init_checkpoint
    resuming = args.resume and os.path.isfile(os.path.join(cfg.train.output_dir, "last_checkpoint"))
    if weights and "://" not in weights and not resuming and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"train.init_checkpoint file not found: {weights!r} (set train.init_checkpoint to a "
            "checkpoint such as <train.output_dir>/model_final.pth, a detectron2:// URL, or '' "
            "for random init)"
        )
    return cfg


def do_test(cfg: DictConfig, model) -> Dict[str, Any]:
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator`` (a list is
    combined); ``{}`` if the config has no test loader or evaluator."""
    if cfg.dataloader.get("test") is None or cfg.dataloader.get("evaluator") is None:
        return {}
    with preserved_rng():  # evaluating during training changes nothing in it
        return _do_test(cfg, model)


def _do_test(cfg: DictConfig, model) -> Dict[str, Any]:
    evaluator = instantiate(cfg.dataloader.evaluator)
    if not hasattr(evaluator, "process"):
        evaluator = DatasetEvaluators(list(evaluator))
    loader = instantiate(_checked_test_loader_config(cfg.dataloader.test))
    results = inference_on_dataset(model, loader, evaluator)
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def _build_model(cfg: DictConfig):
    model = instantiate(cfg.model)
    if cfg.train.get("train_only_head", False):
        counts = freeze_all_but_mask_head(model)
        logger.info(
            "train.train_only_head: training the mask head only (%s trainable parameters; %s "
            "frozen; %d BatchNorm layers made FrozenBN)",
            f"{counts['trainable']:,}",
            f"{counts['frozen']:,}",
            counts["frozen_batch_norms"],
        )
    logger.info("Model:\n%s", model)
    return model.to(cfg.train.device)


def do_train(args: argparse.Namespace, cfg: DictConfig) -> None:
    """Train ``cfg`` from ``train.init_checkpoint`` (or resume from ``train.output_dir`` with
    ``args.resume``) to ``train.max_iter``, evaluating every ``train.eval_period`` iterations
    and after the last one."""
    model = _build_model(cfg)
    cfg.optimizer.params.model = model  # frozen parameters are left out of the optimizer
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(_resumable_loader_config(cfg.dataloader.train))
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    stop_on_non_finite_loss(trainer, cfg.train.output_dir)
    resume_state = _ResumeState(trainer, train_loader)
    checkpointer = RFPNCheckpointer(
        model, cfg.train.output_dir, trainer=trainer, resume=resume_state
    )
    main = comm.is_main_process()
    gather = comm.get_world_size() > 1  # every process's RNG state, before the checkpointer
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            _GatherRNGStates(cfg.train.checkpointer.period) if gather else None,
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # a checkpoint stores the iteration that just finished: resume at the next one
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if start_iter and not resume_state.loaded:
        resume_state.continue_without_state(start_iter)
    if args.resume:
        drop_redone_metrics(cfg.train.output_dir, start_iter)
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except (DatasetItemError, EvaluationItemError) as error:  # a bad image: save, one line
        raise save_before_stopping(checkpointer, trainer, error, start_iter) from None


class _ResumeState:
    """The checkpoint's ``resume`` entry: every process's RNG state and the training data's
    position (a :class:`~crbp_d2.rfpn.data.resumable.ResumableTrainLoader`), so that a resumed run
    continues exactly (see the yacs ``Trainer``)."""

    def __init__(self, trainer, loader) -> None:
        self.trainer = trainer
        self.loader = loader if isinstance(loader, ResumableTrainLoader) else None
        self.loaded = False

    def state_dict(self) -> Dict[str, Any]:
        ret: Dict[str, Any] = {"rng": rng_states(self.trainer)}
        if self.loader is not None:
            ret["data"] = {"train": self.loader.state_dict()}
        return ret

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        data = state.get("data", {})
        if self.loader is not None and "train" in data:
            self.loader.load_state_dict(data["train"])
        restore_rng_states(state.get("rng"))
        self.loaded = True

    def continue_without_state(self, start_iter: int) -> None:
        """A checkpoint saved before this state existed: continue the data stream at batch
        ``start_iter`` (the random state is not restored)."""
        logger.warning(
            "The checkpoint has no data position or random state (saved before resumable "
            "training): the data continues at batch %d of this run's stream",
            start_iter,
        )
        if self.loader is not None:
            self.loader.skip_to(start_iter)


def _with_checked_targets(
    node: DictConfig, loader, loader_target: str, dataset_target: str
) -> DictConfig:
    """A copy of the loader ``node`` with Detectron2's ``loader`` swapped for ``loader_target``
    and a dataset built by ``get_detection_dataset_dicts`` swapped for ``dataset_target`` (same
    arguments); ``node`` itself when it builds another loader."""
    if not _is_target(node, loader):
        return node
    node = copy.deepcopy(node)
    node._target_ = loader_target
    dataset = node.get("dataset")
    if isinstance(dataset, DictConfig) and _is_target(dataset, get_detection_dataset_dicts):
        dataset._target_ = dataset_target
    return node


def _resumable_loader_config(node: DictConfig) -> DictConfig:
    """``dataloader.train`` with Detectron2's ``build_detection_train_loader`` swapped for
    :func:`~crbp_d2.rfpn.data.resumable.resumable_detection_train_loader` and its dataset for
    :func:`~crbp_d2.rfpn.data.resumable.load_training_dicts` (an empty dataset or a category id
    not in its file: one line naming the file)."""
    return _with_checked_targets(
        node,
        build_detection_train_loader,
        "crbp_d2.rfpn.data.resumable.resumable_detection_train_loader",
        "crbp_d2.rfpn.data.resumable.load_training_dicts",
    )


_LOAD_TEST_DICTS = "crbp_d2.rfpn.data.resumable.load_test_dicts"


def _checked_test_loader_config(node: DictConfig) -> DictConfig:
    """``dataloader.test`` with Detectron2's ``build_detection_test_loader`` and
    ``get_detection_dataset_dicts`` swapped for the checked ones
    (:func:`~crbp_d2.rfpn.data.resumable.checked_detection_test_loader`,
    :func:`~crbp_d2.rfpn.data.resumable.load_test_dicts`: a bad image, an empty dataset, unknown
    categories, tiny images: one line naming the file)."""
    checked = _with_checked_targets(
        node,
        build_detection_test_loader,
        "crbp_d2.rfpn.data.resumable.checked_detection_test_loader",
        _LOAD_TEST_DICTS,
    )
    dataset = checked.get("dataset") if checked is not node else None
    if isinstance(dataset, DictConfig) and dataset.get("_target_") == _LOAD_TEST_DICTS:
        checked.dataset_names = ", ".join(_dataset_names(dataset.get("names", [])))
    return checked


def _is_target(node: DictConfig, function) -> bool:
    target = node.get("_target_")
    if isinstance(target, str):
        try:
            target = locate(target)
        except ImportError:
            return False
    return target is function


def train_or_evaluate_lazy(args: argparse.Namespace):
    """Train, or with ``args.eval_only`` load ``train.init_checkpoint`` and evaluate.

    Returns:
        The evaluation results (task -> metric -> value) for ``--eval-only``, else None.
    """
    cfg = build_lazy_config(args)
    default_setup_plain(cfg, args)
    if not args.eval_only:
        do_train(args, cfg)
        return None
    model = _build_model(cfg)
    model = create_ddp_model(model)
    checkpointer = RFPNCheckpointer(model, cfg.train.output_dir)
    if args.resume:  # the folder's last checkpoint (else train.init_checkpoint)
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=True)
    else:
        checkpointer.load(cfg.train.init_checkpoint)
    if cfg.train.init_checkpoint or checkpointer.has_checkpoint() and args.resume:
        check_weights_cover_model(
            checkpointer.last_report, getattr(args, "allow_partial_weights", False)
        )
    results = do_test(cfg, model)
    if comm.is_main_process() and results:
        _append_metrics(cfg.train.output_dir, flatten_results_dict(results))
    return results
