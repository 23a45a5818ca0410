"""Config keys of the recurrent (R-FPN) mask head, and their validation.

``add_crbp_config(cfg)`` adds the sub-node ``cfg.MODEL.ROI_MASK_HEAD.RECURRENT`` (the way
PointRend's ``add_pointrend_config`` adds its keys). Run it on a fresh ``get_cfg()`` *before*
``merge_from_file`` / ``merge_from_list``, so that yacs knows the keys (it rejects unknown keys).

``validate_crbp_config(cfg)`` rejects invalid combinations with one ``ValueError`` naming the key;
the head's ``from_config`` and ``tools/train_net.py`` call it, so a bad config fails when the model
is built, before any data is loaded.

Names in the authors' Detectron2 fork (``MODEL.ROI_MASK_HEAD.*``) are given in the comments.
"""

from __future__ import annotations

import os
import zipfile
from typing import Optional, Sequence

from detectron2.config import CfgNode as CN

from ..recurrent import EngineSpec, engine_config_defaults, spec_from_node
from ..recurrent.base import NONLINEARITIES
from ..utils.configs import has_key, unknown_key_message, yaml_error_message

__all__ = [
    "CELLS",
    "CELL_NORMS",
    "READOUT_NORMS",
    "add_crbp_config",
    "check_device",
    "check_sync_norms",
    "check_weights_file",
    "get_crbp_cfg",
    "validate_crbp_config",
]

CELLS = ("hgru", "convlstm")
OPTIMIZERS = ("SGD", "ADAMW")
# Norms allowed *inside* the cell: it is double-differentiated by the LCP and must be a per-ROI map.
CELL_NORMS = ("GN", "IN", "none", "")  # "none": off ("" accepted, as Detectron2 spells it)
# Norms Detectron2's get_norm accepts for the readout (outside the recurrence, so any of them).
READOUT_NORMS = (
    "none",
    "",
    "BN",
    "SyncBN",
    "naiveSyncBN",
    "naiveSyncBN_N",
    "nnSyncBN",
    "FrozenBN",
    "GN",
)
_BATCH_NORMS = (
    "BN",
    "SyncBN",
    "naiveSyncBN",
    "naiveSyncBN_N",
    "nnSyncBN",
    "NaiveSyncBN",
    "FrozenBN",
)


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
    # Train the mask head only: every other parameter gets requires_grad False (so Detectron2's
    # optimizer leaves it out) and BatchNorm outside the head becomes FrozenBN (its statistics stop
    # moving). For fine-tuning a fresh recurrent head on a feedforward Panoptic FPN checkpoint
    # (crbp_d2.rfpn.modeling.freeze_all_but_mask_head; the lazy configs' train.train_only_head).
    node.TRAIN_ONLY_HEAD = False

    # Also score the mask head alone after each evaluation: its masks on the ground-truth boxes
    # and classes, mask IoU and boundary F-score per class (task "gt_box" of the results, in
    # metrics.json and the copypaste lines; crbp_d2.rfpn.evaluation.gt_box).
    cfg.TEST.GT_BOX_MASKS = False

    # Optimizer of tools/train_net.py: "SGD" (Detectron2's, the paper) | "ADAMW" (the authors'
    # SOLVER.OPTIM "adam"; trains the CPU quick configs from random init in a few hundred steps).
    cfg.SOLVER.OPTIMIZER = "SGD"
    return cfg


def _fail(key: str, value, why: str) -> None:
    raise ValueError(f"cfg.MODEL.ROI_MASK_HEAD.RECURRENT.{key} = {value!r}: {why}")


def _check_int(node: CN, key: str, minimum: int) -> None:
    value = node[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(key, value, f"must be an integer >= {minimum}")


def _check_choice(node: CN, key: str, choices) -> None:
    if node[key] not in choices:
        _fail(key, node[key], f"unknown value; choose one of {tuple(choices)}")


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
    node = head.RECURRENT
    spec = spec_from_node(node, "cfg.MODEL.ROI_MASK_HEAD.RECURRENT")
    _check_choice(node, "CELL", CELLS)
    _check_choice(node, "NONLINEARITY", tuple(NONLINEARITIES))
    _check_int(node, "KERNEL_SIZE", 1)
    if node.KERNEL_SIZE % 2 == 0:
        _fail("KERNEL_SIZE", node.KERNEL_SIZE, "must be odd (same padding)")
    if node.CELL_NORM in _BATCH_NORMS:
        _fail(
            "CELL_NORM",
            node.CELL_NORM,
            "batch norms cannot be inside the recurrent cell: SyncBN has no double backward (the "
            "LCP needs one), FrozenBN is not a norm of the state, and BN's batch statistics mix "
            "all RoIs of the batch into every RoI's map (and change between train and test). Use "
            "'GN' (the paper), 'IN' or 'none'; BN/SyncBN belong in READOUT_NORM",
        )
    _check_choice(node, "CELL_NORM", CELL_NORMS)
    _check_choice(node, "READOUT_NORM", READOUT_NORMS)
    _check_int(node, "CELL_NORM_GROUPS", 1)
    if node.CELL == "hgru" and node.CELL_NORM == "GN" and head.CONV_DIM % node.CELL_NORM_GROUPS:
        _fail(
            "CELL_NORM_GROUPS",
            node.CELL_NORM_GROUPS,
            f"MODEL.ROI_MASK_HEAD.CONV_DIM ({head.CONV_DIM}) must be divisible by it",
        )
    if node.READOUT_NORM == "GN" and head.CONV_DIM % 32:
        _fail(
            "READOUT_NORM",
            "GN",
            f"Detectron2's GN uses 32 groups; MODEL.ROI_MASK_HEAD.CONV_DIM ({head.CONV_DIM}) "
            "is not divisible by 32",
        )
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
