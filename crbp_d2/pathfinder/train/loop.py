"""The Pathfinder training loop (the CLI is :mod:`crbp_d2.cli.train_pathfinder`).

One :class:`Trainer` handles every model and every learning method: focal or cross-entropy loss
(+ ``LCP_WEIGHT`` x LCP, ``LCP_METHODS``), Adam, evaluation each ``EVAL_PERIOD`` epochs on the test
set, best/last checkpoints (written atomically), exact ``resume`` (model, optimizer, scaler,
epoch, RNG states), CSV + TensorBoard logs, CPU/CUDA, DistributedDataParallel under ``torchrun``
(gloo on CPU, NCCL on CUDA) and autocast on CUDA.

Distributed runs split the global ``SOLVER.BATCH_SIZE`` over the processes; evaluation runs on
rank 0 over the whole test set. BatchNorm with batch statistics (the hGRU's) then normalises over
each process's share of the batch, as the authors' DataParallel did over each GPU's share.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from crbp_d2.recurrent import NonFiniteStateError
from crbp_d2.utils.io import atomic_torch_save, atomic_write_json, atomic_write_text
from crbp_d2.utils.machine import grad_scaler
from crbp_d2.utils.run_dir import PATHFINDER_RUN_FILES
from crbp_d2.utils.run_dir import prepare_output_dir as _prepare_output_dir
from crbp_d2.utils.safe_load import CheckpointReadError, load_torch_file

from ...utils.errors import NonFiniteLossError
from ...utils.rng import get_rng_state, seed_everything, set_rng_state
from ..config import ConfigError, config_differences, config_from_dump
from ..data.datasets import build_dataset
from ..dist import DistInfo, autocast, pick_device, setup_distributed, unwrap
from ..evaluation.evaluator import evaluate_model
from ..losses import compute_loss, gradient_fidelity
from ..modeling import build_model, count_parameters

# -- logs and random state ------------------------------------------------------------------


class CsvLog:
    """Append-only CSV with a fixed header (new columns are ignored), flushed every row."""

    def __init__(
        self, path: str, fields: Sequence[str], keep_through: Optional[int] = None
    ) -> None:
        """``keep_through``: drop the existing rows whose ``iteration`` is above it (a resumed run
        redoes the iterations after its checkpoint: their rows are written again, not twice)."""
        self.path = path
        self.fields = list(fields)
        exists = os.path.isfile(path) and os.path.getsize(path) > 0
        if exists:
            with open(path) as f:
                header = f.readline().strip().split(",")
            self.fields = header
            if keep_through is not None:
                self._drop_rows_after(keep_through)
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, self.fields, extrasaction="ignore")
        if not exists:
            self._writer.writeheader()
            self._file.flush()

    def _drop_rows_after(self, iteration: int) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))

        def kept(row: Dict[str, str]) -> bool:
            try:
                return int(float(row.get("iteration") or 0)) <= iteration
            except ValueError:  # a row cut off mid-write
                return False

        keep = [r for r in rows if kept(r) and None not in r]
        if len(keep) == len(rows):
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(keep)
        atomic_write_text(self.path, buffer.getvalue())

    def write(self, row: Dict[str, float]) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


TRAIN_FIELDS = (
    "epoch",
    "iteration",
    "loss",
    "task_loss",
    "lcp",
    "lcp_fraction_above",
    "residual",
    "neumann_terms",
    "neumann_cap_fired",
    "forward_evaluations",
    "solver_residual",
    "solver_fell_back",
    "grad_cosine",
    "grad_relative_error",
    "reference_residual",
    "reference_converged",
    "lr",
    "seconds_per_iter",
)
EVAL_FIELDS = (
    "epoch",
    "iteration",
    "steps",
    "iou",
    "mean_image_iou",
    "f1",
    "paper_f1",
    "paper_iou",
    "test_loss",
    "test_residual",
    "spectral_radius",
    "seconds",
)


# -- the trainer -----------------------------------------------------------------------------


RUN_FILES = PATHFINDER_RUN_FILES


def prepare_output_dir(output_dir: str, resume: bool = False, overwrite: bool = False) -> None:
    """Check ``output_dir`` before anything is built: it must be a folder (or not exist yet),
    and a folder holding a run (finished or partial) is continued only with ``resume`` or
    started again only with ``overwrite`` (which removes the old run's files); see
    :func:`crbp_d2.utils.run_dir.prepare_output_dir`."""
    _prepare_output_dir(output_dir, resume, overwrite, patterns=PATHFINDER_RUN_FILES)


class Trainer:
    """Train and evaluate one Pathfinder model from a config.

    Args:
        cfg: a frozen config from :func:`crbp_d2.pathfinder.config.load_config`.
        train_set / test_set: datasets to use instead of building them from ``cfg.DATA``.
        resume: continue from ``OUTPUT_DIR/last.pth`` (or the path given) exactly.
    """

    def __init__(
        self,
        cfg,
        train_set: Optional[Dataset] = None,
        test_set: Optional[Dataset] = None,
        resume: "bool | str" = False,
        dist_info: Optional[DistInfo] = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info or setup_distributed()
        if cfg.NUM_THREADS > 0:
            torch.set_num_threads(cfg.NUM_THREADS)
        self.device = pick_device(cfg.DEVICE, self.dist.local_rank)
        self.output_dir = cfg.OUTPUT_DIR
        self.progress = progress and self.dist.is_main
        if cfg.SOLVER.BATCH_SIZE % self.dist.world_size:
            raise ValueError(
                f"SOLVER.BATCH_SIZE {cfg.SOLVER.BATCH_SIZE} is not divisible by the "
                f"{self.dist.world_size} processes"
            )
        self.amp_dtype: Optional[torch.dtype] = None
        if cfg.SOLVER.AMP and self.device.type == "cuda":
            self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[
                cfg.SOLVER.AMP_DTYPE
            ]

        seed_everything(cfg.SEED)
        self.train_set = train_set if train_set is not None else build_dataset(cfg, "train")
        self.test_set = test_set if test_set is not None else build_dataset(cfg, "test")
        seed_everything(cfg.SEED)
        model = build_model(cfg).to(self.device)
        self.model: nn.Module = model
        if self.dist.enabled:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=cfg.SOLVER.LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
        self.scaler = grad_scaler(self.amp_dtype == torch.float16 and self.device.type == "cuda")
        self.epoch = 0  # epochs completed
        self.iteration = 0  # optimizer steps done
        self.best_iou = -math.inf
        self.history: List[Dict[str, float]] = []
        self.last_diagnostics: Dict[str, float] = {}
        if resume:
            path = resume if isinstance(resume, str) else os.path.join(self.output_dir, "last.pth")
            self.load_checkpoint(path)

    # -- data ----------------------------------------------------------------------------------

    def iters_per_epoch(self) -> int:
        per_process = self.cfg.SOLVER.BATCH_SIZE // self.dist.world_size
        full = len(self.train_set) // (per_process * self.dist.world_size)
        if full == 0:
            raise ValueError(
                f"the training set ({len(self.train_set)} images) is smaller than one batch "
                f"({self.cfg.SOLVER.BATCH_SIZE})"
            )
        cap = self.cfg.SOLVER.MAX_ITERS_PER_EPOCH
        return min(full, cap) if cap > 0 else full

    def train_loader(self, epoch: int) -> DataLoader:
        per_process = self.cfg.SOLVER.BATCH_SIZE // self.dist.world_size
        seed = self.cfg.SEED * 100003 + epoch
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)  # new random flips each epoch
        if self.dist.enabled:
            sampler = DistributedSampler(
                self.train_set,
                self.dist.world_size,
                self.dist.rank,
                shuffle=True,
                seed=self.cfg.SEED,
            )
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(self.train_set, generator=torch.Generator().manual_seed(seed))
        return DataLoader(
            self.train_set,
            batch_size=per_process,
            sampler=sampler,
            drop_last=True,
            num_workers=self.cfg.DATA.NUM_WORKERS,
            pin_memory=self.device.type == "cuda",
        )

    def test_loader(self, dataset: Optional[Dataset] = None) -> DataLoader:
        return DataLoader(
            dataset if dataset is not None else self.test_set,
            batch_size=self.cfg.TEST.BATCH_SIZE,
            shuffle=False,
            num_workers=self.cfg.DATA.NUM_WORKERS,
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "best_iou": self.best_iou,
            "history": self.history,
            "rng": get_rng_state(),
            "config": self.cfg.dump(),
        }

    def save_checkpoint(self, name: str) -> str:
        path = os.path.join(self.output_dir, name)
        if self.dist.is_main:
            atomic_torch_save(self.checkpoint_state(), path)
        return path

    def load_checkpoint(self, path: str, weights_only: bool = False) -> None:
        """Load a trainer checkpoint (read as data only: :mod:`crbp_d2.utils.safe_load`); with
        ``weights_only`` the model's weights only, else the whole training state."""
        state = load_torch_file(path, map_location=self.device)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise CheckpointReadError(
                f"{path} is not a Pathfinder trainer checkpoint (no 'model' dict of weights)"
            )
        try:
            unwrap(self.model).load_state_dict(state["model"])
        except RuntimeError as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointReadError(
                f"checkpoint {path} does not fit the configured model ({first}; "
                "is it from another MODEL.RECURRENT.CELL / MODEL.CHANNELS?)"
            ) from None
        if weights_only:
            return
        missing = [
            k for k in ("optimizer", "scaler", "epoch", "iteration", "rng") if k not in state
        ]
        if missing:
            raise CheckpointReadError(
                f"checkpoint {path} cannot be resumed from: it has no {', '.join(missing)}"
            )
        self._warn_config_changes(state.get("config"), path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.iteration = state["iteration"]
        self.best_iou = state["best_iou"]
        self.history = state["history"]
        set_rng_state(state["rng"])

    def _warn_config_changes(self, dumped: Optional[str], path: str) -> None:
        """Warn, naming each key, when the run resumed from ``path`` was trained with other
        settings than this config (e.g. a longer schedule: the run goes on with the new ones)."""
        if not isinstance(dumped, str):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # renamed keys: not a change
            try:
                before = config_from_dump(dumped, path)
            except ConfigError:
                return
        changes = config_differences(before, self.cfg)
        if changes:
            warnings.warn(
                f"resuming {path}, trained with other settings than this config; the run goes "
                f"on with this config's: {'; '.join(changes)}",
                stacklevel=3,
            )

    # -- training ------------------------------------------------------------------------------

    def _lr_for(self, iteration: int, total: int) -> float:
        base = self.cfg.SOLVER.LR
        if self.cfg.SOLVER.LR_SCHEDULE == "cosine" and total > 0:
            return base * 0.5 * (1 + math.cos(math.pi * min(iteration / total, 1.0)))
        return base

    def train_step(self, image: Tensor, label: Tensor, total_iters: int = 0) -> Dict[str, float]:
        """One optimizer step; returns the logged scalars. Raises NonFiniteLossError."""
        self.model.train()
        lr = self._lr_for(self.iteration, total_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        image, label = image.to(self.device), label.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with autocast(self.device, self.amp_dtype):
                total, task, out = compute_loss(self.model, image, label, self.cfg)
        except NonFiniteStateError as error:
            raise NonFiniteLossError(
                f"{error} at epoch {self.epoch + 1}, iteration {self.iteration + 1}; last "
                f"diagnostics: {self.last_diagnostics}. Checkpoints in {self.output_dir} are from "
                "before this step."
            ) from None
        if not torch.isfinite(total.detach()):
            raise NonFiniteLossError(
                f"non-finite loss {float(total.detach())} (task {float(task.detach())}) "
                f"at epoch {self.epoch + 1}, "
                f"iteration {self.iteration + 1}; last diagnostics: {self.last_diagnostics}; "
                f"this step's forward: {out.diagnostics.scalars() if out.diagnostics else {}}. "
                f"Checkpoints in {self.output_dir} are from before this step."
            )
        self.scaler.scale(total).backward()
        if self.cfg.SOLVER.GRAD_CLIP > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.SOLVER.GRAD_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        scalars = {"loss": float(total.detach()), "task_loss": float(task.detach()), "lr": lr}
        if out.diagnostics is not None:
            scalars.update(out.diagnostics.scalars())
        period = self.cfg.MODEL.RECURRENT.FIDELITY_PERIOD
        if period > 0 and self.iteration % period == 0:
            with autocast(self.device, self.amp_dtype):
                scalars.update(gradient_fidelity(self.model, image, label, self.cfg))
        self.last_diagnostics = scalars
        return scalars

    def train(self) -> Dict[str, float]:
        """Run the remaining epochs; returns the best evaluation summary."""
        cfg = self.cfg
        os.makedirs(self.output_dir, exist_ok=True)
        writer = None
        train_log = eval_log = None
        if self.dist.is_main:
            atomic_write_text(os.path.join(self.output_dir, "config.yaml"), cfg.dump())
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(os.path.join(self.output_dir, "tb"))
            # rows of iterations after the checkpoint this run starts from are redone: drop them
            done = self.iteration
            train_log = CsvLog(os.path.join(self.output_dir, "train_log.csv"), TRAIN_FIELDS, done)
            eval_log = CsvLog(os.path.join(self.output_dir, "eval_log.csv"), EVAL_FIELDS, done)
            print(
                f"[pathfinder] {cfg.MODEL.RECURRENT.CELL} / {cfg.MODEL.RECURRENT.METHOD}, "
                f"{count_parameters(unwrap(self.model)):,} parameters, device {self.device}, "
                f"{self.dist.world_size} process(es), {len(self.train_set)} train / "
                f"{len(self.test_set)} test images",
                flush=True,
            )
        iters = self.iters_per_epoch()
        total_iters = iters * cfg.SOLVER.EPOCHS
        try:
            while self.epoch < cfg.SOLVER.EPOCHS:
                loader = self.train_loader(self.epoch)
                bar = tqdm(
                    total=iters,
                    desc=f"epoch {self.epoch + 1}/{cfg.SOLVER.EPOCHS}",
                    disable=not self.progress,
                    mininterval=1.0 if sys.stderr.isatty() else 30.0,
                    file=sys.stderr,
                )
                tic = time.time()
                for i, (image, label) in enumerate(loader):
                    if i >= iters:
                        break
                    scalars = self.train_step(image, label, total_iters)
                    bar.update(1)
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
                    if self.dist.is_main and (
                        self.iteration % cfg.SOLVER.LOG_PERIOD == 0
                        or i == iters - 1
                        or "grad_cosine" in scalars  # a gradient-fidelity step
                    ):
                        row = dict(scalars, epoch=self.epoch + 1, iteration=self.iteration)
                        row["seconds_per_iter"] = (time.time() - tic) / (i + 1)
                        train_log.write(row)
                        for key, value in scalars.items():
                            writer.add_scalar(f"train/{key}", value, self.iteration)
                bar.close()
                self.epoch += 1
                if self.epoch % cfg.TEST.EVAL_PERIOD == 0 or self.epoch == cfg.SOLVER.EPOCHS:
                    self._evaluate_and_log(writer, eval_log)
                self.save_checkpoint("last.pth")
                if self.dist.enabled:
                    dist.barrier()
        finally:
            if writer is not None:
                writer.close()
            for log in (train_log, eval_log):
                if log is not None:
                    log.close()
        best = max(self.history, key=lambda r: r["iou"]) if self.history else {}
        if self.dist.is_main:
            atomic_write_json(
                {"best": best, "history": self.history},
                os.path.join(self.output_dir, "metrics.json"),
            )
        return best

    def _evaluate_and_log(self, writer, eval_log) -> None:
        if not self.dist.is_main:
            return
        tic = time.time()
        steps: List[Optional[int]] = [None] + [int(s) for s in self.cfg.TEST.EXTRA_STEPS]
        if not getattr(unwrap(self.model), "recurrent", False):
            steps = [None]
        results = self.evaluate(steps)
        seconds = time.time() - tic
        main_key = next(iter(results))
        for key, summary in results.items():
            row = dict(summary, epoch=self.epoch, iteration=self.iteration, seconds=seconds)
            eval_log.write(row)
            tag = "test" if key == main_key else f"test_{key}steps"
            for name, value in summary.items():
                if not math.isnan(value):
                    writer.add_scalar(f"{tag}/{name}", value, self.epoch)
        main = dict(results[main_key], epoch=self.epoch, iteration=self.iteration)
        for key, summary in results.items():
            if key != main_key:
                main[f"iou_at_{key}"] = summary["iou"]
        self.history.append(main)
        print(
            f"[pathfinder] epoch {self.epoch}: IoU {main['iou']:.4f} "
            f"(paper {main['paper_iou']:.4f}, "
            f"per image {main['mean_image_iou']:.4f})"
            + "".join(f", IoU@{k} {v['iou']:.4f}" for k, v in results.items() if k != main_key),
            flush=True,
        )
        if main["iou"] > self.best_iou:
            self.best_iou = main["iou"]
            self.save_checkpoint("best.pth")

    def evaluate(self, steps: Sequence[Optional[int]] = (None,), dataset: Optional[Dataset] = None):
        """Metrics on the test set (or ``dataset``) at the given step counts."""
        return evaluate_model(
            self.model,
            self.test_loader(dataset),
            self.device,
            steps,
            self.cfg.SOLVER.LOSS,
            self.cfg.SOLVER.FOCAL_GAMMA,
            self.cfg.TEST.SPECTRAL_RADIUS_ITERS,
            self.amp_dtype,
        )

    def evaluate_checkpoint(
        self, weights: Optional[str] = None, extra_steps: Sequence[int] = ()
    ) -> Dict[str, Dict[str, float]]:
        """Evaluate the model weights of a checkpoint (default ``OUTPUT_DIR/best.pth``) at the
        test steps and at ``extra_steps``; rank 0 writes ``OUTPUT_DIR/eval_only.json``
        ({weights, results}). Returns {step count as text ("test_steps" for the controls):
        metrics}."""
        weights = weights or os.path.join(self.output_dir, "best.pth")
        self.load_checkpoint(weights, weights_only=True)
        results = self.evaluate([None] + [int(s) for s in extra_steps])
        table = {str(k if k is not None else "test_steps"): v for k, v in results.items()}
        if self.dist.is_main:
            atomic_write_json(
                {"weights": weights, "results": table},
                os.path.join(self.output_dir, "eval_only.json"),
            )
        return table
