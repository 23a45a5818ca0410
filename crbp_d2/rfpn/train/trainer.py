"""Training and evaluating Panoptic FPN / R-FPN with Detectron2: the project's ``Trainer`` and
the ``setup`` / ``main`` pair of a Detectron2 ``train_net.py``.

:func:`train_or_evaluate` takes the arguments of Detectron2's ``default_argument_parser`` and is
what ``launch`` runs in every worker process, as ``crbp_d2.cli.train_net`` does (skipped as a
doctest: it trains; ``tests/test_d2_train_net.py`` runs it on tiny synthetic data):

>>> from crbp_d2.rfpn.train.trainer import train_or_evaluate  # first (Detectron2 compatibility)
>>> from detectron2.engine import default_argument_parser, launch
>>> argv = ["--config-file", "configs/quick/R-FPN-R50-CRBP-synthetic.yaml"]
>>> args = default_argument_parser().parse_args(argv)
>>> launch(train_or_evaluate, args.num_gpus, num_machines=args.num_machines,  # doctest: +SKIP
...        machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import weakref
from typing import Dict, List, Mapping, Optional

import detectron2.utils.comm as comm
import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import DatasetEvaluators, print_csv_format, verify_results
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.solver.build import get_default_optimizer_params

from ...utils import atomic_write_text
from ...utils.errors import NonFiniteLossError
from ...utils.io import json_dumps
from ...utils.rng import get_rng_state, preserved_rng, set_rng_state
from ..checkpoint import RFPNCheckpointer, check_weights_cover_model
from ..config import (
    check_device,
    check_sync_norms,
    check_weights_file,
    get_crbp_cfg,
    train_only_head,
)
from ..data import check_dataset_files, check_mask_format, check_num_classes
from ..data.resumable import (
    DatasetItemError,
    EvaluationItemError,
    ResumableTrainLoader,
    build_checked_test_loader,
    build_resumable_train_loader,
    item_error_line,
)
from ..evaluation import build_evaluator
from ..evaluation.gt_box import GT_BOX_TASK, gt_box_results
from ..modeling.freeze import freeze_all_but_mask_head
from .launch import ddp_on_any_device
from .optimizer import build_adamw

__all__ = [
    "NonFiniteLossError",
    "Trainer",
    "build_config",
    "check_losses_finite",
    "default_setup_plain",
    "drop_metrics_rows",
    "save_before_stopping",
    "setup",
    "stop_on_non_finite_loss",
    "train_or_evaluate",
]

logger = logging.getLogger("detectron2")


def check_losses_finite(
    loss_dict: Mapping[str, torch.Tensor], iteration: int, output_dir: Optional[str] = None
) -> None:
    """Raise :class:`NonFiniteLossError` naming every non-finite term of ``loss_dict`` and the
    ``iteration`` (the other terms' values too), and the last checkpoint in ``output_dir``."""
    values = {
        k: float(v.detach().float().sum()) if torch.is_tensor(v) else float(v)
        for k, v in loss_dict.items()
    }
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if not bad:
        return
    others = ", ".join(f"{k} = {v:.4g}" for k, v in values.items() if k not in bad)
    message = (
        f"{', '.join(f'{k} = {values[k]}' for k in bad)} at iteration {iteration}"
        + (f" (the other terms: {others})" if others else "")
        + "; training stopped before the optimizer step"
    )
    if output_dir is not None:
        last = _last_checkpoint(output_dir)
        message += (
            f"; the checkpoints in {output_dir} are kept (last: {last}; continue from it with "
            "--resume, e.g. with a lower SOLVER.BASE_LR)"
            if last
            else f"; no checkpoint was written yet in {output_dir}"
        )
    raise NonFiniteLossError(message)


def _last_checkpoint(output_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def stop_on_non_finite_loss(trainer, output_dir: Optional[str] = None) -> None:
    """Make a Detectron2 ``SimpleTrainer`` / ``AMPTrainer`` stop with
    :class:`NonFiniteLossError` (see :func:`check_losses_finite`) when a loss term of an
    iteration is not finite, on every process, after backward and before the optimizer step
    (the weights are not updated with it; the checkpoints already written are kept).
    Detectron2 alone only reports the sum, as a two-line message on the main process."""
    write_metrics = trainer._write_metrics

    def checked_write_metrics(loss_dict, data_time, prefix: str = "", **kwargs):
        check_losses_finite(loss_dict, trainer.iter, output_dir)
        return write_metrics(loss_dict, data_time, prefix, **kwargs)

    trainer._write_metrics = checked_write_metrics


def save_before_stopping(
    checkpointer, trainer, error: BaseException, start_iter: int
) -> BaseException:
    """A data item that cannot be loaded (a truncated image) stopped ``trainer`` at iteration
    ``trainer.iter``: save the iterations done since ``start_iter`` as the checkpoint
    ``model_{last done}.pth`` (main process; as the periodic checkpointer would have, so that
    ``--resume`` continues after them) and return the error to raise (of ``error``'s type): one
    line naming the image file and that checkpoint. A training item stops an iteration before
    its step (the iterations done end at ``trainer.iter - 1``); a test item (the periodic
    evaluation, after the step) after it."""
    failed = int(trainer.iter)
    message = item_error_line(error)
    evaluating = isinstance(error, EvaluationItemError)
    done = failed if evaluating else failed - 1
    saved_dir = getattr(checkpointer, "save_dir", "") or "."
    if evaluating and _last_checkpoint(saved_dir) in (f"model_{done:07d}.pth", "model_final.pth"):
        return type(error)(
            f"{message}; the evaluation stopped after iteration {done}, which is saved in "
            f"{os.path.join(saved_dir, _last_checkpoint(saved_dir))}"
        )
    if done >= start_iter:
        trainer.iter = done  # the checkpoint holds the iterations done (resume starts after)
        try:
            checkpointer.save(f"model_{done:07d}", iteration=done)
        finally:
            trainer.iter = failed
        where = (
            f"iterations {start_iter}..{done} are saved in "
            f"{os.path.join(saved_dir, f'model_{done:07d}.pth')}"
        )
    else:
        last = _last_checkpoint(saved_dir)
        where = "no iteration was done since " + (f"the checkpoint {last}" if last else "the start")
    return type(error)(
        f"{message}; training stopped at iteration {failed}: {where} (fix or remove the image, "
        "then continue with --resume)"
    )


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's evaluators (hotcoco PQ, COCO AP, semantic mIoU), the
    ``SOLVER.OPTIMIZER`` switch (SGD or AdamW), ``SOLVER.TRAIN_ONLY_HEAD``
    and :class:`~crbp_d2.rfpn.checkpoint.RFPNCheckpointer` (a feedforward Panoptic FPN checkpoint in
    ``MODEL.WEIGHTS`` loads into R-FPN with a fresh recurrent head; one summary of the keys);
    multi-process on CPU too (gloo, no device ids for DDP: :mod:`crbp_d2.rfpn.train.launch`).

    A resumed run (``resume_or_load(resume=True)``, ``--resume``) continues exactly: the training
    data comes from a :class:`~crbp_d2.rfpn.data.resumable.ResumableTrainLoader` whose position is
    in each checkpoint (``trainer.data``), and so are the random generators' states of every process
    (``trainer.rng``: Python, NumPy, torch CPU and CUDA), so it ends with the weights of the
    uninterrupted run (bit for bit on CPU; on GPU as far as the kernels are deterministic). Rows
    of ``metrics.json`` for the iterations that the resumed run does again are dropped.
    Evaluation does not change the random state of training.
    """

    def __init__(self, cfg: CfgNode) -> None:
        with ddp_on_any_device():
            super().__init__(cfg)
        # DefaultTrainer builds a plain DetectionCheckpointer; swap in ours, in the periodic
        # checkpointer hook too (it saves through the same object).
        old = self.checkpointer
        self.checkpointer = RFPNCheckpointer(old.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        for hook in self._hooks:
            if isinstance(hook, hooks.PeriodicCheckpointer) and hook.checkpointer is old:
                hook.checkpointer = self.checkpointer
        stop_on_non_finite_loss(self._trainer, cfg.OUTPUT_DIR)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> ResumableTrainLoader:
        """Detectron2's training loader (``DATASETS.TRAIN``, ``DATALOADER.*``,
        ``SOLVER.IMS_PER_BATCH``, ``DatasetMapper``) in the resumable form."""
        return build_resumable_train_loader(cfg)

    def build_hooks(self) -> list:
        ret = super().build_hooks()
        if comm.get_world_size() > 1:  # every process's RNG state, just before the checkpointer
            kinds = (hooks.PeriodicCheckpointer, hooks.EvalHook)
            at = next(i for i, h in enumerate(ret) if isinstance(h, kinds))
            ret.insert(at, _GatherRNGStates(self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return ret

    def _resumable_loaders(self) -> Dict[str, ResumableTrainLoader]:
        """The training loader and PreciseBN's (both continue where they were on resume)."""
        loaders = {"train": self._trainer.data_loader}
        for hook in self._hooks:
            if isinstance(hook, hooks.PreciseBN):
                loaders["precise_bn"] = hook._data_loader
        return {k: v for k, v in loaders.items() if isinstance(v, ResumableTrainLoader)}

    def state_dict(self) -> dict:
        ret = super().state_dict()
        if "_trainer" not in ret:  # this Detectron2's DefaultTrainer does not save the optimizer
            ret["_trainer"] = self._trainer.state_dict()  # optimizer (+ AMP grad scaler)
        ret["rng"] = rng_states(self)
        ret["data"] = {name: ld.state_dict() for name, ld in self._resumable_loaders().items()}
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "load_state_dict" not in DefaultTrainer.__dict__:  # (newer Detectron2 loads it)
            if "_trainer" in state_dict:
                self._trainer.load_state_dict(state_dict["_trainer"])
            else:
                logger.warning(
                    "The checkpoint has no optimizer state (saved before it was added): the "
                    "optimizer starts afresh"
                )
        data = state_dict.get("data", {})
        for name, loader in self._resumable_loaders().items():
            if name in data:
                loader.load_state_dict(data[name])
            elif name == "train":
                loader.skip_to(self.iter + 1)
                logger.warning(
                    "The checkpoint has no data-loader position (saved before resumable "
                    "training): the training data continues at batch %d of this run's stream, "
                    "not where the interrupted run was",
                    self.iter + 1,
                )
        restore_rng_states(state_dict.get("rng"))

    def train(self):
        """Detectron2's training loop; an item of the training data that cannot be loaded (a
        truncated image) stops it after saving the iterations done (:func:`save_before_stopping`),
        with one :class:`~crbp_d2.rfpn.data.resumable.DatasetItemError` line."""
        try:
            return super().train()
        except (DatasetItemError, EvaluationItemError) as error:
            raise save_before_stopping(self.checkpointer, self, error, self.start_iter) from None

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's; on resume also drops the ``metrics.json`` rows of the iterations from
        the resumed one on (written after the checkpoint by the interrupted run)."""
        super().resume_or_load(resume=resume)
        if resume:
            drop_redone_metrics(self.cfg.OUTPUT_DIR, self.start_iter)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """Detectron2's model; with ``SOLVER.TRAIN_ONLY_HEAD`` everything but the mask head is
        frozen (before the optimizer is built, so that it holds the head's parameters only)."""
        model = super().build_model(cfg)
        if train_only_head(cfg):
            counts = freeze_all_but_mask_head(model)
            logging.getLogger("detectron2").info(
                "SOLVER.TRAIN_ONLY_HEAD: training the mask head only (%s trainable parameters; %s "
                "frozen; %d BatchNorm layers made FrozenBN)",
                f"{counts['trainable']:,}",
                f"{counts['frozen']:,}",
                counts["frozen_batch_norms"],
            )
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        if cfg.SOLVER.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        return build_adamw(cfg, params)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """Detectron2's test loader, with the test dataset checked as the training one (empty,
        unknown categories, tiny images, the panoptic JSON's categories) and a bad image named
        (:func:`~crbp_d2.rfpn.data.resumable.build_checked_test_loader`)."""
        return build_checked_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluators:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """Detectron2's evaluation, plus (``TEST.GT_BOX_MASKS``) the mask head on ground-truth
        boxes as the task ``gt_box`` of each dataset's results (main process). The random
        generators are as before afterwards (evaluating during training changes nothing in it)."""
        with preserved_rng():
            return cls._test(cfg, model, evaluators)

    @classmethod
    def _test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if not cfg.TEST.GT_BOX_MASKS or not comm.is_main_process():
            return results
        names = list(cfg.DATASETS.TEST)
        per_dataset = results if len(names) > 1 else {names[0]: results}
        for name in names:
            per_dataset[name][GT_BOX_TASK] = gt_box_results(
                cfg, getattr(model, "module", model), name
            )
            print_csv_format({GT_BOX_TASK: per_dataset[name][GT_BOX_TASK]})
        return results


def rng_states(trainer) -> List[dict]:
    """The RNG states of all processes for a checkpoint (one process: this one's; several:
    gathered by :class:`_GatherRNGStates` at ``trainer.iter``; else only this one's, which a
    resume then does not restore)."""
    if comm.get_world_size() == 1:
        return [get_rng_state()]
    gathered = getattr(trainer, "_gathered_rng", None)
    if gathered is not None and gathered[0] == trainer.iter:
        return gathered[1]
    return [get_rng_state()]


def restore_rng_states(states: Optional[List[dict]]) -> None:
    """Set this process's generators from what :func:`rng_states` saved (warns where it cannot:
    an old checkpoint, another number of processes)."""
    world = comm.get_world_size()
    if states is None:
        logger.warning("The checkpoint has no random-generator states: not restored")
    elif len(states) != world:
        logger.warning(
            "The checkpoint has the random-generator states of %d process(es), this run has "
            "%d: not restored",
            len(states),
            world,
        )
    else:
        set_rng_state(states[comm.get_rank()])


class _GatherRNGStates(hooks.HookBase):
    """Multi-process runs: at the iterations the checkpointer saves, all processes' RNG states
    are gathered into ``trainer._gathered_rng`` for the main process's checkpoint."""

    def __init__(self, period: int) -> None:
        self._period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self._period == 0 or it >= self.trainer.max_iter - 1:
            self.trainer._gathered_rng = (it, comm.all_gather(get_rng_state()))


def drop_redone_metrics(output_dir: str, start_iter: int) -> None:
    """On resume (main process): drop the rows of ``output_dir/metrics.json`` of iterations
    ``>= start_iter``, which the interrupted run wrote after its last checkpoint."""
    if not comm.is_main_process():
        return
    path = os.path.join(output_dir, "metrics.json")
    dropped = drop_metrics_rows(path, start_iter)
    if dropped:
        logger.info(
            "Resuming at iteration %d: dropped %d row(s) of later iterations from %s",
            start_iter,
            dropped,
            path,
        )


def drop_metrics_rows(path: str, start_iter: int) -> int:
    """Remove from the JSON-lines file ``path`` (Detectron2's ``metrics.json``) every row whose
    ``"iteration"`` is ``>= start_iter``, and a last line cut off mid-write; other lines are kept
    as they are. Changes the file in place (an open append handle, as Detectron2's JSONWriter
    holds, keeps appending at the new end). Returns the number of rows dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    keep: List[bytes] = []
    dropped = 0
    for number, line in enumerate(lines):
        last = number == len(lines) - 1  # after the last newline: b"" or a torn line
        if last and not line:
            break
        try:
            row = json.loads(line)
        except ValueError:
            if last:
                dropped += 1
                continue
            row = None
        iteration = row.get("iteration") if isinstance(row, dict) else None
        if isinstance(iteration, int) and iteration >= start_iter:
            dropped += 1
            continue
        keep.append(line)
    if not dropped:
        return 0
    text = b"".join(line + b"\n" for line in keep)
    with open(path, "r+b") as f:
        if not raw.startswith(text):
            f.write(text)
        f.truncate(len(text))
        f.flush()
        os.fsync(f.fileno())
    return dropped


def build_config(args: argparse.Namespace) -> CfgNode:
    """The frozen config of ``args`` (``config_file``, ``opts``, ``resume``) after every check
    that can fail before training starts: unknown keys, invalid recurrent settings, unknown
    dataset names, class counts that do not match the datasets, a missing weights file, a
    synchronised BatchNorm that cannot run on the processes and device asked for."""
    cfg = get_crbp_cfg(args.config_file, args.opts)
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    resumes = args.eval_only and args.resume and os.path.isfile(last)  # the folder's last one
    if args.eval_only and args.resume and not resumes and not cfg.MODEL.WEIGHTS:
        raise FileNotFoundError(
            f"--eval-only --resume: OUTPUT_DIR {cfg.OUTPUT_DIR!r} holds no checkpoint to evaluate "
            "(no last_checkpoint); set OUTPUT_DIR to a training run's folder, or MODEL.WEIGHTS"
        )
    random_ok = getattr(args, "random_weights", False)
    if args.eval_only and not cfg.MODEL.WEIGHTS and not resumes and not random_ok:
        raise ValueError(
            "--eval-only without MODEL.WEIGHTS would evaluate a randomly initialised model: set "
            "MODEL.WEIGHTS to a checkpoint (e.g. OUTPUT_DIR/model_final.pth), or pass "
            "--random-weights to do it anyway"
        )
    check_device(cfg)
    processes = getattr(args, "num_gpus", 1) * getattr(args, "num_machines", 1)
    if not args.eval_only:  # synchronised norms synchronise in training only
        check_sync_norms(cfg, processes)
        if cfg.SOLVER.IMS_PER_BATCH % max(processes, 1):  # else Detectron2 asserts in each worker
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by the "
                f"number of processes ({processes}: --num-gpus x --num-machines)"
            )
    splits = ("TEST",) if args.eval_only else ("TRAIN", "TEST")  # an evaluation reads no train
    check_num_classes(cfg, splits)  # checks the dataset names first
    check_dataset_files(cfg, splits)
    check_mask_format(cfg)
    check_weights_file(cfg, resume=args.resume)
    cfg.freeze()
    return cfg


def default_setup_plain(cfg, args: argparse.Namespace) -> None:
    """Detectron2's ``default_setup`` (logging, output dir, config dump, seeds), with the config
    dumps as plain text unless stdout is a terminal: Detectron2 colours them with pygments, and
    the same messages go to ``OUTPUT_DIR/log.txt`` (and to the log files ``make demo`` keeps),
    where the colour codes are noise."""
    import detectron2.engine.defaults as defaults

    highlight = getattr(defaults, "_highlight", None)
    if highlight is None or sys.stdout.isatty():
        default_setup(cfg, args)
        return
    defaults._highlight = lambda code, filename: code
    try:
        default_setup(cfg, args)
    finally:
        defaults._highlight = highlight


def setup(args: argparse.Namespace) -> CfgNode:
    """Build the config and do Detectron2's default setup (logging, output dir, seeds)."""
    cfg = build_config(args)
    default_setup_plain(cfg, args)
    return cfg


def train_or_evaluate(args: argparse.Namespace):
    """Train (``Trainer.train``) or, with ``args.eval_only``, load the weights and evaluate.

    Returns:
        The evaluation results (dict of dataset name -> task -> metric) for ``--eval-only``,
        else what ``DefaultTrainer.train`` returns.
    """
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = RFPNCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if not getattr(args, "random_weights", False):  # evaluate what the file holds
            check_weights_cover_model(
                checkpointer.last_report, getattr(args, "allow_partial_weights", False)
            )
        results = Trainer.test(cfg, model)  # logs the copypaste lines (print_csv_format)
        if comm.is_main_process():
            verify_results(cfg, results)
            _append_metrics(cfg.OUTPUT_DIR, flatten_results_dict(results))
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _append_metrics(output_dir: str, values: dict) -> None:
    """Add one line to ``output_dir/metrics.json`` (JSON lines, as Detectron2's JSONWriter writes
    during training) with the results of an ``--eval-only`` run."""
    path = os.path.join(output_dir, "metrics.json")
    old = ""
    if os.path.isfile(path):
        with open(path) as f:
            old = f.read()
        if old and not old.endswith("\n"):
            old += "\n"
    line = json_dumps({"eval_only": True, **{k: float(v) for k, v in values.items()}}, None)
    atomic_write_text(path, old + line + "\n")
