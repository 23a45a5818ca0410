"""Loading checkpoints into R-FPN, including a feedforward Panoptic FPN's.

:class:`RFPNCheckpointer` is Detectron2's ``DetectionCheckpointer`` (model-zoo ``.pkl`` files,
Caffe2 / ImageNet names, native ``.pth`` checkpoints) plus three things:

* a checkpoint of a *feedforward* Panoptic FPN (its mask head is the 4-conv stack,
  ``roi_heads.mask_head.mask_fcn*``, ``deconv``, ``predictor``) loaded into a model whose mask
  head is the recurrent one: every ``roi_heads.mask_head.*`` key of the file is skipped, so the
  recurrent head (cell, readout norm, deconv and predictor) starts fresh while everything else
  (backbone, FPN, RPN, box head, semantic head) is loaded. A checkpoint of a recurrent head (it has
  ``roi_heads.mask_head.engine.*`` keys: an R-FPN run, ``--resume``) loads as usual;
* one log message that lists the keys loaded, skipped (and why) and newly initialised, grouped
  by module (also :attr:`RFPNCheckpointer.last_report`, a :class:`LoadReport`);
* a missing or unreadable file is one :class:`CheckpointFileError` line naming it;
* files are read as data, never as code (:mod:`crbp_d2.utils.safe_load`): ``.pth`` with
  ``torch.load(weights_only=True)``, model-zoo ``.pkl`` with an unpickler that builds NumPy arrays
  only; a file that would run code when loaded is refused in one line.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys, _strip_prefix_if_present
from torch import nn

from ..utils.io import atomic_torch_save, atomic_write_text
from ..utils.safe_load import CheckpointReadError, load_pickle_weights, load_torch_file
from .modeling.freeze import MASK_HEAD_PREFIX
from .modeling.recurrent_mask_head import RecurrentMaskHead

__all__ = [
    "CheckpointFileError",
    "CheckpointWriteError",
    "LoadReport",
    "MAX_NEW_SHARE",
    "PartialWeightsError",
    "RFPNCheckpointer",
    "check_weights_cover_model",
    "format_keys",
]

# --eval-only refuses a checkpoint that leaves more than this share of the model's weights at
# their random initialisation (unless asked: --allow-partial-weights).
MAX_NEW_SHARE = 0.01

RECURRENT_HEAD_MARKER = MASK_HEAD_PREFIX + ".engine."


class CheckpointFileError(CheckpointReadError):
    """A checkpoint file that does not exist or cannot be read as one (message: one line)."""


class CheckpointWriteError(CheckpointFileError):
    """A checkpoint that could not be written (disk full, folder gone; one line). The file and
    ``last_checkpoint`` are as before: the previous checkpoints are intact."""


class PartialWeightsError(CheckpointFileError):
    """A checkpoint that sets too few of the model's weights to evaluate it (one line)."""


def format_keys(keys: Sequence[str], max_groups: int = 12) -> str:
    """State-dict keys as one line, grouped by module: ``a.b.{bias,weight}, c.weight``; when
    there are more than ``max_groups`` modules, by the first two name components with counts:
    ``backbone.bottom_up.* (265), roi_heads.box_head.*.weight (2)``."""
    if not keys:
        return "none"
    modules: Dict[str, List[str]] = defaultdict(list)
    for key in keys:
        module, _, leaf = key.rpartition(".")
        modules[module].append(leaf)
    if len(modules) <= max_groups:
        parts = []
        for module, leaves in sorted(modules.items()):
            names = sorted(leaves)
            tail = names[0] if len(names) == 1 else "{" + ",".join(names) + "}"
            parts.append(f"{module}.{tail}" if module else tail)
        return ", ".join(parts)
    prefixes: Dict[str, List[str]] = defaultdict(list)
    for key in keys:
        prefixes[".".join(key.split(".")[:2])].append(key)
    parts = []
    for prefix, members in sorted(prefixes.items()):
        if len(members) == 1:
            parts.append(members[0])
            continue
        leaves = {k.rpartition(".")[2] for k in members}
        tail = f".*.{next(iter(leaves))}" if len(leaves) == 1 else ".*"
        parts.append(f"{prefix}{tail} ({len(members)})")
    return ", ".join(parts)


@dataclass
class LoadReport:
    """What one checkpoint load did, key by key (state-dict names of the model).

    Attributes:
        path: the file.
        loaded: model keys that got the file's values.
        skipped_head: file keys of a feedforward mask head, not loaded into the recurrent head.
        skipped_unused: file keys the model does not have.
        skipped_shape: ``(key, shape in the file, shape in the model)`` of keys not loaded.
        new: model keys the file did not set (they keep their fresh initialisation).
    """

    path: str
    loaded: List[str] = field(default_factory=list)
    skipped_head: List[str] = field(default_factory=list)
    skipped_unused: List[str] = field(default_factory=list)
    skipped_shape: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    new: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """The multi-line log message."""
        skipped = len(self.skipped_head) + len(self.skipped_unused) + len(self.skipped_shape)
        shapes = ", ".join(
            f"{k} (file {tuple(a)}, model {tuple(b)})" for k, a, b in self.skipped_shape
        )
        lines = [
            f"Checkpoint {self.path}: {len(self.loaded)} keys loaded, {skipped} skipped, "
            f"{len(self.new)} newly initialised",
            f"  loaded ({len(self.loaded)}): {format_keys(self.loaded)}",
        ]
        if self.skipped_head:
            lines.append(
                f"  skipped, the feedforward mask head: the recurrent head starts fresh "
                f"({len(self.skipped_head)}): {format_keys(self.skipped_head)}"
            )
        lines += [
            f"  skipped, not in the model ({len(self.skipped_unused)}): "
            f"{format_keys(self.skipped_unused)}",
            f"  skipped, shape differs ({len(self.skipped_shape)}): {shapes or 'none'}",
            f"  newly initialised ({len(self.new)}): {format_keys(self.new)}",
        ]
        return "\n".join(lines)


def check_weights_cover_model(
    report: Optional["LoadReport"],
    allow_partial: bool = False,
    max_new_share: float = MAX_NEW_SHARE,
    flag: str = "--allow-partial-weights",
) -> None:
    """Before an evaluation: raise :class:`PartialWeightsError` (one line listing the groups) when
    the load of ``report`` left more than ``max_new_share`` of the model's weights (state-dict
    keys) at their random initialisation; with ``allow_partial`` log it as a warning instead."""
    if report is None:
        return
    counted = lambda keys: [k for k in keys if not k.endswith("num_batches_tracked")]  # noqa: E731
    loaded, new = counted(report.loaded), counted(report.new)  # (counters, not weights)
    total = len(loaded) + len(new)
    if not total or len(new) <= max_new_share * total:
        return
    skipped = report.skipped_head + report.skipped_unused + [k for k, *_ in report.skipped_shape]
    message = (
        f"{report.path} sets {len(loaded)} of the model's {total} weights: "
        f"{len(new)} ({len(new) / total:.0%}) would be evaluated at their random "
        f"initialisation ({format_keys(new)}); {len(skipped)} of the file's keys were "
        f"skipped ({format_keys(skipped)}). Is it a checkpoint of this config's model?"
    )
    if not allow_partial:
        raise PartialWeightsError(f"{message} ({flag} evaluates it anyway)")
    logging.getLogger("detectron2").warning("EVALUATING A PARTLY RANDOM MODEL: %s", message)


def _recurrent_head_prefixes(model: nn.Module) -> List[str]:
    """``name + "."`` of every RecurrentMaskHead in ``model`` (``roi_heads.mask_head.``)."""
    return [
        name + "."
        for name, module in model.named_modules()
        if isinstance(module, RecurrentMaskHead) and name
    ]


def _is_remote(path: str) -> bool:
    return "://" in path


def _read_weights_file(filename: str) -> Dict[str, Any]:
    """Detectron2's ``DetectionCheckpointer._load_file`` (model-zoo ``.pkl`` of Detectron2 or
    Caffe2, pycls ``.pyth``, native ``.pth``), reading every file as data only."""
    if filename.endswith(".pkl"):
        data = load_pickle_weights(filename)
        if not isinstance(data, Mapping):
            raise CheckpointFileError(f"cannot read checkpoint {filename}: it holds no dict")
        if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
            return dict(data)
        if "blobs" in data:  # Caffe2 / Detectron1 detection models
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
    data = load_torch_file(filename, map_location="cpu")
    if filename.endswith(".pyth"):  # pycls
        if not isinstance(data, Mapping) or "model_state" not in data:
            raise CheckpointFileError(
                f"cannot read checkpoint {filename}: a pycls .pyth file must hold 'model_state'"
            )
        state = {
            k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")
        }
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    if isinstance(data, Mapping) and "model" not in data:
        data = {"model": data}
    return data


class RFPNCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that loads a feedforward Panoptic FPN checkpoint into R-FPN with a
    fresh recurrent mask head, logs one summary of the keys and names unreadable files.

    Same constructor and methods as ``DetectionCheckpointer`` (``load``, ``resume_or_load``,
    ``save``). After a load, :attr:`last_report` holds the :class:`LoadReport`.
    """

    last_report: Optional[LoadReport] = None
    _path: str = ""

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        if path and not _is_remote(path) and not os.path.isfile(path):
            raise CheckpointFileError(f"checkpoint file not found: {path}")
        self._path = path
        return super().load(path, *args, **kwargs)

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's ``save`` written atomically: ``NAME.pth`` and then ``last_checkpoint`` are
        each either the old file or the whole new one (never a half-written checkpoint, also on a
        full disk or ``kill -9``); a failed write is one :class:`CheckpointWriteError` line."""
        if not self.save_dir or not self.save_to_disk:
            return
        if _is_remote(self.save_dir):
            super().save(name, **kwargs)
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        try:
            atomic_torch_save(data, path)
            atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), basename)
        except OSError as error:
            last = self.get_checkpoint_file() if self.has_checkpoint() else None
            raise CheckpointWriteError(
                f"cannot write checkpoint {path}: {error.strerror or error}; nothing was half "
                "written" + (f" and the last checkpoint {last} is intact" if last else "")
            ) from None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            data = _read_weights_file(filename)
        except CheckpointReadError as error:
            raise CheckpointFileError(str(error)) from None
        except Exception as error:  # torch.load / pickle errors, or not a dict
            raise CheckpointFileError(
                f"cannot read checkpoint {filename}: not a Detectron2 checkpoint (.pth: a "
                "torch.save'd dict of tensors; .pkl: a pickled dict with 'model') "
                f"({type(error).__name__})"
            ) from None
        if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
            raise CheckpointFileError(
                f"cannot read checkpoint {filename}: it holds no 'model' dict of weights"
            )
        return data

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        state = checkpoint["model"]
        _strip_prefix_if_present(state, "module.")
        skipped_head: List[str] = []
        for prefix in _recurrent_head_prefixes(self.model):
            head_keys = [k for k in state if k.startswith(prefix)]
            if head_keys and not any(k.startswith(prefix + "engine.") for k in head_keys):
                skipped_head += head_keys  # a feedforward head's weights: not for this head
                for key in head_keys:
                    del state[key]
        model_keys = list(self.model.state_dict())
        incompatible = super()._load_model(checkpoint)
        missing = set(incompatible.missing_keys)
        self.last_report = LoadReport(
            path=self._path,
            loaded=[k for k in model_keys if k not in missing],
            skipped_head=sorted(skipped_head),
            skipped_unused=sorted(incompatible.unexpected_keys),
            skipped_shape=list(incompatible.incorrect_shapes),
            new=[k for k in model_keys if k in missing],
        )
        return incompatible

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        if self.last_report is not None:
            self.logger.info(self.last_report.summary())
