"""Config keys of the recurrent (R-FPN) mask head, and their validation.

``add_crbp_config(cfg)`` adds the sub-node ``cfg.MODEL.ROI_MASK_HEAD.RECURRENT`` (the way
PointRend's ``add_pointrend_config`` adds its keys). Run it on a fresh ``get_cfg()`` *before*
``merge_from_file`` / ``merge_from_list``, so that yacs knows the keys (it rejects unknown keys).

``validate_crbp_config(cfg)`` rejects invalid combinations with one ``ValueError`` naming the key;
``get_crbp_cfg`` and ``tools/train_net.py`` call it, so a bad config fails before any data is
loaded. The head reads its node itself when it is built (``head_spec`` in
:mod:`crbp_d2.rfpn.modeling.recurrent_mask_head`: the same two checks, the engine's keys and the
head's own), without coming back here.

Names in the authors' Detectron2 fork (``MODEL.ROI_MASK_HEAD.*``) are given in the comments.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from typing import Optional, Sequence

from detectron2.config import CfgNode as CN

from ..recurrent import EngineSpec, engine_config_defaults, spec_from_node
from ..utils.configs import has_key, unknown_key_message, yaml_error_message
from .modeling.recurrent_mask_head import CELL_NORMS, CELLS, READOUT_NORMS, check_head_keys

__all__ = [
    "CELLS",
    "DEPRECATED_CFG_KEYS",
    "CELL_NORMS",
    "READOUT_NORMS",
    "add_crbp_config",
    "check_device",
    "check_sync_norms",
    "check_weights_file",
    "get_crbp_cfg",
    "move_deprecated_keys",
    "train_only_head",
    "validate_crbp_config",
]

OPTIMIZERS = ("SGD", "ADAMW")


def add_crbp_config(cfg: CN) -> CN:
    """Add the recurrent mask head's keys (defaults = the paper's R-FPN C-RBP settings).

    The head itself is chosen as usual with ``MODEL.ROI_MASK_HEAD.NAME: "RecurrentMaskHead"``.
    The head's width is ``MODEL.ROI_MASK_HEAD.CONV_DIM`` (256, = the FPN width); ``NUM_CONV`` and
    ``NORM`` of the feedforward head are not used by it. Returns ``cfg`` (modified in place).

    The head and the built-in datasets are registered by importing :mod:`crbp_d2.rfpn` (which
    importing this module does first), so a config that names them can be built right away.
    """

    node = cfg.MODEL.ROI_MASK_HEAD.RECURRENT = CN(
        engine_config_defaults(LCP_WEIGHT=1e-3, LCP_REDUCTION="sum")
    )
    # The engine keys, the same sub-keys as the Pathfinder config's MODEL.RECURRENT, each
    # documented on its field of EngineSpec in crbp_d2/recurrent/spec.py (CONFIG_KEYS maps key ->
    # field; 0 means "unset" for TEST_TIMESTEPS, TBPTT_STEPS and the tolerances): TIMESTEPS
    # (authors: TIMESTEPS), TEST_TIMESTEPS (tools/timestep_sweep.py varies it), METHOD (authors:
    # GRAD = bptt | rbp | cbp), NEUMANN_STEPS (K, hard-coded 15 in the authors' code), NORM_CAP /
    # CAP_THRESHOLD / CAP_RELATIVE, LCP_WEIGHT (authors: XI = 0.001 with the sum reduction),
    # LCP_LAMBDA (authors: TAU; their fork's default 0.95 was in effect for its COCO runs),
    # LCP_REDUCTION, MONITOR_LCP, HALT_TOLERANCE, NEUMANN_TOL, PHANTOM_STEPS / PHANTOM_DAMPING,
    # FORWARD_SOLVER (SOLVER before) / SOLVER_TOL / ANDERSON_WINDOW / ANDERSON_DAMPING,
    # COMPILE_CELL, CUDA_GRAPH, AUTOCAST_BF16, FIDELITY_PERIOD. Defaults: the paper's R-FPN
    # C-RBP-20 (the Detectron2 code's summed LCP with weight 1e-3).

    # Cell run on the 14x14 RoI features: "hgru" (the paper's mask-head hGRU) | "convlstm"
    # (GALA, NONLINEARITY, LESS_SOFTPLUS, CHRONOS_LOG and CELL_NORM* apply to the hGRU only).
    node.CELL = "hgru"
    # Spatial size of the cell's kernels (3 in the paper; the fork's Recurrent5 head used 5).
    node.KERNEL_SIZE = 3
    # GALA inhibition gate (per-pixel channel bottleneck x spatial map) (authors: GALA).
    node.GALA = True
    # Nonlinearity of the hGRU: softplus | tanh | sigmoid | relu (authors: NL).
    node.NONLINEARITY = "softplus"
    # h~ = nl(c1) (True, the paper's configs) instead of inh + nl(omega inh nl(c1)) (LESS_SOFTPLUS).
    node.LESS_SOFTPLUS = True
    # Chronos gate-bias init log U(1, T-1) (True, the intent) or U(1, T-1) (False, authors' code).
    node.CHRONOS_LOG = True
    # Two inits of the authors' mask-head code (True): the GALA channel bottleneck's bias at
    # PyTorch's default (ours: zero) and, without GALA, the update gate's 1x1 weight at PyTorch's
    # default (ours: Kaiming normal). See MaskHeadHGRUCell(authors_init=...).
    node.AUTHORS_INIT = False
    # Norm inside the cell: "GN" | "IN" | "none" ("" accepted) (authors: NORM = "GN"). BN/SyncBN
    # are rejected.
    node.CELL_NORM = "GN"
    # Groups of the GroupNorm inside the cell (CONV_DIM must be divisible by it).
    node.CELL_NORM_GROUPS = 32
    # Norm on the final state before the deconv, any detectron2 get_norm name or "none" (authors:
    # OUTPUTNORM = "SyncBN"; use "GN" on CPU / single-image batches).
    node.READOUT_NORM = "SyncBN"
    # The old place of SOLVER.TRAIN_ONLY_HEAD (a training switch, not the head's): None = not set;
    # a value set here is still read, with a FutureWarning (see DEPRECATED_CFG_KEYS).
    node.TRAIN_ONLY_HEAD = None

    # Also score the mask head alone after each evaluation: its masks on the ground-truth boxes
    # and classes, mask IoU and boundary F-score per class (task "gt_box" of the results, in
    # metrics.json and the copypaste lines; crbp_d2.rfpn.evaluation.gt_box).
    cfg.TEST.GT_BOX_MASKS = False

    # Optimizer of tools/train_net.py: "SGD" (Detectron2's, the paper) | "ADAMW" (the authors'
    # SOLVER.OPTIM "adam"; trains the CPU quick configs from random init in a few hundred steps).
    cfg.SOLVER.OPTIMIZER = "SGD"
    # Train the mask head only: every other parameter gets requires_grad False (so Detectron2's
    # optimizer leaves it out) and BatchNorm outside the head becomes FrozenBN (its statistics stop
    # moving). For fine-tuning a fresh recurrent head on a feedforward Panoptic FPN checkpoint
    # (crbp_d2.rfpn.modeling.freeze_all_but_mask_head). It decides what the optimizer holds, so it
    # sits with the optimizer's keys in SOLVER, which Detectron2's LazyConfigs spell train.*: the
    # LazyConfig key is train.train_only_head. (MODEL.ROI_MASK_HEAD.RECURRENT.TRAIN_ONLY_HEAD
    # before: still read, with a FutureWarning.)
    cfg.SOLVER.TRAIN_ONLY_HEAD = False
    return cfg


# old key -> new key of the yacs config, read for one version with a FutureWarning naming the new
# key (the old key stays in the defaults as None, "not set", so that yacs still merges old files).
DEPRECATED_CFG_KEYS = {"MODEL.ROI_MASK_HEAD.RECURRENT.TRAIN_ONLY_HEAD": "SOLVER.TRAIN_ONLY_HEAD"}


def _node_and_leaf(cfg: CN, key: str):
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node.get(part) if node is not None else None
    return node, leaf


def _deprecated_value(cfg: CN, old: str):
    """The value set under the deprecated key ``old`` (warning), or None if it is not set."""
    node, leaf = _node_and_leaf(cfg, old)
    value = node.get(leaf) if node is not None else None
    if value is not None:
        warnings.warn(
            f"config key {old} is deprecated: use {DEPRECATED_CFG_KEYS[old]}; the old name will "
            "be removed in the next version",
            FutureWarning,
            stacklevel=3,
        )
    return value


def move_deprecated_keys(cfg: CN) -> CN:
    """Move the values set under the old keys of :data:`DEPRECATED_CFG_KEYS` to their new keys
    (a ``FutureWarning`` naming the new key for each), so that the rest of the code reads the new
    keys only. A frozen config is left as it is (:func:`train_only_head` still reads it)."""
    if cfg.is_frozen():
        return cfg
    for old, new in DEPRECATED_CFG_KEYS.items():
        value = _deprecated_value(cfg, old)
        if value is not None:
            node, leaf = _node_and_leaf(cfg, new)
            node[leaf] = value
            old_node, old_leaf = _node_and_leaf(cfg, old)
            old_node[old_leaf] = None
    return cfg


def train_only_head(cfg: CN) -> bool:
    """``SOLVER.TRAIN_ONLY_HEAD`` (or, with a ``FutureWarning``, the old
    ``MODEL.ROI_MASK_HEAD.RECURRENT.TRAIN_ONLY_HEAD`` where a frozen config still holds it)."""
    old = _deprecated_value(cfg, "MODEL.ROI_MASK_HEAD.RECURRENT.TRAIN_ONLY_HEAD")
    if old is not None:
        return bool(old)
    return bool(cfg.SOLVER.get("TRAIN_ONLY_HEAD", False))


def validate_crbp_config(cfg: CN) -> Optional[EngineSpec]:
    """Raise ``ValueError`` (naming the key) if the recurrent head's settings are invalid.

    Returns the engine spec of ``MODEL.ROI_MASK_HEAD.RECURRENT``, or None if ``add_crbp_config``
    was never applied and the recurrent head is not used.
    """
    optimizer = cfg.SOLVER.get("OPTIMIZER", "SGD")
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"cfg.SOLVER.OPTIMIZER = {optimizer!r}: unknown value; choose one of {OPTIMIZERS}"
        )
    move_deprecated_keys(cfg)
    head = cfg.MODEL.ROI_MASK_HEAD
    uses_recurrent = head.NAME in ("RecurrentMaskHead", "RecurrentMaskRCNNConvUpsampleHead")
    if "RECURRENT" not in head:
        if uses_recurrent:
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.NAME is {head.NAME!r} but the config has no "
                "MODEL.ROI_MASK_HEAD.RECURRENT node: call crbp_d2.rfpn.config.add_crbp_config(cfg) "
                "before merging the config file"
            )
        return None
    # the engine's keys, then the head's own (what the head's head_spec does when it is built;
    # called here directly, so that the way from the YAML to the engine is as short as the
    # Pathfinder one: tests/test_yaml_to_engine.py)
    spec = spec_from_node(head.RECURRENT, "cfg.MODEL.ROI_MASK_HEAD.RECURRENT")
    check_head_keys(cfg)
    return spec


def get_crbp_cfg(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """A Detectron2 config with the recurrent keys, merged from ``config_file`` and ``opts``,
    validated (not frozen).

    Unknown keys in the file or the opts raise yacs' ``KeyError: 'Non-existent config key: ...'``.
    """
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_crbp_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file not found: {config_file}")
        import yaml

        try:
            cfg.merge_from_file(config_file)
        except yaml.YAMLError as error:  # (also in a _BASE_ file, which yacs opens the same way)
            raise ValueError(yaml_error_message(config_file, error)) from None
        except KeyError as error:
            message = unknown_key_message(cfg, str(error.args[0]), f"config file {config_file}")
            raise KeyError(message) from None
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd list: {opts}")
    for key in opts[0::2]:
        if cfg.key_is_deprecated(key) or cfg.key_is_renamed(key):
            continue  # yacs ignores the first and explains the second
        if not has_key(cfg, key):
            raise KeyError(unknown_key_message(cfg, key, "the command-line overrides"))
    cfg.merge_from_list(opts)
    validate_crbp_config(cfg)
    return cfg


def _is_remote(path: str) -> bool:
    return "://" in path  # detectron2://, https://, catalog:// ... are fetched by PathManager


def check_weights_file(cfg: CN, resume: bool = False) -> None:
    """Raise ``FileNotFoundError`` naming ``cfg.MODEL.WEIGHTS`` if it is a local path that does
    not exist and will be loaded (not when resuming from a checkpoint in ``cfg.OUTPUT_DIR``)."""
    path = cfg.MODEL.WEIGHTS
    if not path or _is_remote(path):
        return
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS file not found: {path!r} (set MODEL.WEIGHTS to a checkpoint such as "
            "<OUTPUT_DIR>/model_final.pth, to a detectron2:// URL, or to '' for random init)"
        )
    problem = _checkpoint_problem(path)
    if problem:
        raise ValueError(f"MODEL.WEIGHTS {path!r} is not a readable checkpoint: {problem}")


def _checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a checkpoint (torch.save's zip or a pickle, e.g. Detectron2's
    model-zoo ``.pkl``), from its first and last bytes, or None. Catches empty, truncated and
    unrelated files without loading them."""
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # torch.save's zip format: a complete zip ends with its directory
        return None if zipfile.is_zipfile(path) else "a truncated zip (torch.save) file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
        return None if last == b"." else "a truncated pickle file"  # "." ends every pickle
    return "neither a torch.save file nor a pickle (.pkl)"


# Detectron2 norm keys that get_norm builds (the recurrent head's READOUT_NORM is mapped itself).
_DETECTRON2_NORM_KEYS = (
    "MODEL.RESNETS.NORM",
    "MODEL.FPN.NORM",
    "MODEL.SEM_SEG_HEAD.NORM",
    "MODEL.ROI_BOX_HEAD.NORM",
    "MODEL.ROI_MASK_HEAD.NORM",
)
# get_norm names that build torch.nn.SyncBatchNorm (Detectron2 v0.6 with torch > 1.5).
_TORCH_SYNC_NORMS = ("SyncBN", "nnSyncBN")


def check_sync_norms(cfg: CN, num_processes: int) -> None:
    """Raise ``ValueError`` naming the key for a synchronised BatchNorm that cannot run on
    ``num_processes`` processes of ``MODEL.DEVICE``:

    - off CUDA (gloo), ``SyncBN`` / ``nnSyncBN`` (``torch.nn.SyncBatchNorm``) in a Detectron2
      module: it refuses CPU tensors once there is a process group. The recurrent head's
      ``READOUT_NORM`` is not refused: it becomes ``naiveSyncBN_N`` off CUDA (see
      :func:`crbp_d2.rfpn.modeling.recurrent_mask_head.readout_norm_for_device`);
    - on any device, ``READOUT_NORM naiveSyncBN`` (``stats_mode ""``) with > 1 process: it asserts
      on a process whose images gave no foreground RoI, and weights every process equally.
    """
    if num_processes <= 1:
        return
    if not str(cfg.MODEL.DEVICE).startswith("cuda"):
        for key in _DETECTRON2_NORM_KEYS:
            node = cfg
            for part in key.split("."):
                node = node.get(part) if node is not None else None
            if node in _TORCH_SYNC_NORMS:
                raise ValueError(
                    f"{key} is {node!r} (torch.nn.SyncBatchNorm, CUDA only) but this run has "
                    f"{num_processes} processes on MODEL.DEVICE {cfg.MODEL.DEVICE!r}: use "
                    "'naiveSyncBN_N' (Detectron2's NaiveSyncBatchNorm, works with gloo) or 'BN'"
                )
    head = cfg.MODEL.ROI_MASK_HEAD.get("RECURRENT")
    if head is not None and head.get("READOUT_NORM") == "naiveSyncBN":
        raise ValueError(
            "MODEL.ROI_MASK_HEAD.RECURRENT.READOUT_NORM 'naiveSyncBN' fails on a process whose "
            "images have no foreground RoI (and weights the processes equally, not by their "
            "RoIs): use 'SyncBN' (torch's on CUDA, Detectron2's naiveSyncBN_N elsewhere) or "
            "'naiveSyncBN_N'"
        )


def check_device(cfg: CN) -> None:
    """Raise ``ValueError`` naming the key if ``MODEL.DEVICE`` asks for CUDA on a machine without
    it, or ``SOLVER.AMP.ENABLED`` is set for a CPU run (Detectron2 v0.6's AMPTrainer is CUDA
    only: float16 autocast with a gradient scaler)."""
    import torch

    cuda = str(cfg.MODEL.DEVICE).startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA GPU is available here: add "
            "MODEL.DEVICE cpu to the command line"
        )
    if cfg.SOLVER.AMP.ENABLED and not cuda:
        raise ValueError(
            "SOLVER.AMP.ENABLED True needs MODEL.DEVICE cuda: Detectron2 v0.6's AMPTrainer is "
            "CUDA only (set SOLVER.AMP.ENABLED False on a CPU)"
        )
