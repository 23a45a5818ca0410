"""Configuration of Pathfinder experiments: a yacs CfgNode with defaults, YAML files with
``_BASE_`` inheritance, and ``KEY VALUE`` overrides from the command line.

Every key must exist in :func:`get_default_config`; an unknown key, a value of the wrong type or
a missing base file raises :class:`ConfigError` naming it.

The recurrence (steps, learning method, Neumann series, LCP) is described by ``MODEL.RECURRENT``,
whose keys are those of the Detectron2 head's ``MODEL.ROI_MASK_HEAD.RECURRENT``
(:mod:`crbp_d2.recurrent.spec`). The keys that lived under ``SOLVER`` before (``SOLVER.STEPS``,
``SOLVER.METHOD``, ...) are still read, with a ``FutureWarning`` naming the new key; they will be
removed in the next version.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

from crbp_d2.recurrent import engine_config_defaults, spec_from_node

# the checkout this package runs from (an editable install): the shipped configs and results
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs" / "pathfinder"
LOSSES = ("focal", "ce")
DATA_SOURCES = ("disk", "on_the_fly", "memory")


class ConfigError(ValueError):
    """A bad configuration file or override (unknown key, wrong type, missing file)."""


def get_default_config() -> CN:
    """All keys with their defaults (the paper's values; the authors' code as switches)."""
    cfg = CN()
    cfg.OUTPUT_DIR = "output/pathfinder/default"
    cfg.SEED = 0
    cfg.DEVICE = "auto"  # auto | cpu | cuda | cuda:N
    cfg.NUM_THREADS = 0  # torch.set_num_threads (0: leave as is)

    cfg.MODEL = CN()
    cfg.MODEL.ARCH = "hgru"  # hgru | convlstm | cnn | ff_hgru
    cfg.MODEL.CHANNELS = 25
    cfg.MODEL.KERNEL_SIZE = 15  # hGRU / convLSTM / CNN kernel (3, 5, 9 in the kernel sweep)
    cfg.MODEL.INPUT_KERNEL = 7
    cfg.MODEL.INPUT_INIT = "gabor_dog"  # gabor_dog (paper) | gabor_disk (authors' npy) | random
    cfg.MODEL.INPUT_SQUARE = True
    cfg.MODEL.CELL_NORM = "BN"  # BN (batch stats always) | GN | IN | none
    cfg.MODEL.CELL_NORM_GROUPS = 1
    cfg.MODEL.READOUT_NORM = "BN"  # BN | GN | none
    cfg.MODEL.READOUT_BIAS = "zero"  # zero | authors (equal biases) | prior (p(contour)=0.01)
    cfg.MODEL.CHRONOS_LOG = True  # intended log(U(1, T-1)) gate biases; False = authors' code
    cfg.MODEL.GATE_TIMESCALE = 8.0  # T of the chronos init (authors: U(1, 7)); 0 = TIMESTEPS
    cfg.MODEL.INHIBITION_SOFTPLUS = True
    cfg.MODEL.OUTPUT_SOFTPLUS = True
    cfg.MODEL.LSTM_IMPLICIT_STATE = "joint"  # joint | h_only (authors)
    cfg.MODEL.CNN_LAYERS = 6
    # The recurrence: the same keys as the Detectron2 head's MODEL.ROI_MASK_HEAD.RECURRENT
    # (TIMESTEPS: N in training; TEST_TIMESTEPS: at evaluation, 0 = N; METHOD: bptt | tbptt |
    # rbp | cbptt | crbp; NEUMANN_STEPS: K; NORM_CAP: none (paper) | pathfinder (authors' code) |
    # detectron2, with CAP_THRESHOLD; TBPTT_STEPS: 0 = half of N; LCP_WEIGHT / LCP_LAMBDA /
    # LCP_REDUCTION: the penalty; MONITOR_LCP: log the detached LCP under bptt/tbptt/rbp too;
    # HALT_TOLERANCE: inference halting, 0 = off). Defaults: the paper's C-RBP-20.
    cfg.MODEL.RECURRENT = CN(engine_config_defaults(LCP_WEIGHT=10.0, MONITOR_LCP=True))

    cfg.SOLVER = CN()
    cfg.SOLVER.LOSS = "ce"  # ce (paper) | focal (authors' code, gamma FOCAL_GAMMA)
    cfg.SOLVER.FOCAL_GAMMA = 2.0
    cfg.SOLVER.CONTOUR_WEIGHT = 1.0  # class weight of the contour class (background 1)
    cfg.SOLVER.LR = 3e-4  # paper; the authors' logs used 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.LR_SCHEDULE = "constant"  # constant | cosine
    cfg.SOLVER.GRAD_CLIP = 0.0  # max gradient norm (0: off; the authors do not clip)
    cfg.SOLVER.BATCH_SIZE = 32  # global batch (split over DDP processes)
    cfg.SOLVER.EPOCHS = 20
    cfg.SOLVER.MAX_ITERS_PER_EPOCH = 0  # 0: the whole training set each epoch
    cfg.SOLVER.AMP = False  # autocast (CUDA only)
    cfg.SOLVER.AMP_DTYPE = "bfloat16"  # bfloat16 | float16
    cfg.SOLVER.LOG_PERIOD = 10  # iterations between CSV/TensorBoard rows

    cfg.DATA = CN()
    cfg.DATA.SOURCE = "on_the_fly"  # disk | on_the_fly | memory
    cfg.DATA.ROOT = "datasets/pathfinder"  # root of generated files (SOURCE disk)
    cfg.DATA.TRAIN_LENGTH = 14
    cfg.DATA.TEST_LENGTH = 14
    cfg.DATA.TRAIN_SIZE = 1000
    cfg.DATA.TEST_SIZE = 256
    cfg.DATA.IMAGE_SIZE = 150  # network input side (the paper: 300 -> 150 bicubic)
    cfg.DATA.CANVAS_SIZE = 300  # generator canvas side
    cfg.DATA.RANDOM_FLIP = True
    cfg.DATA.NUM_WORKERS = 0
    cfg.DATA.SEED = 0  # data seed (on-the-fly generation)
    cfg.DATA.TEST_SEED = 1
    cfg.DATA.GENERATOR = CN(new_allowed=True)  # extra generator keyword arguments

    cfg.TEST = CN()
    cfg.TEST.BATCH_SIZE = 32
    cfg.TEST.EVAL_PERIOD = 1  # epochs
    cfg.TEST.SPECTRAL_RADIUS_ITERS = 20  # 0: off
    cfg.TEST.EXTRA_STEPS = []  # also evaluate at these step counts each epoch (e.g. [60])
    return cfg


def _load_yaml(path: str, seen: tuple = ()) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    real = os.path.realpath(path)
    if real in seen:
        raise ConfigError(f"_BASE_ cycle through {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"cannot parse {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    base = data.pop("_BASE_", None)
    _rename_in_mapping(data, path)
    if base is None:
        return data
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    merged = _load_yaml(base_path, seen + (real,))
    _deep_update(merged, data)
    return merged


def _deep_update(target: Dict[str, Any], update: Dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


# old key -> new key (read with a FutureWarning for one version)
RENAMED_KEYS: Dict[str, str] = {
    "SOLVER.METHOD": "MODEL.RECURRENT.METHOD",
    "SOLVER.STEPS": "MODEL.RECURRENT.TIMESTEPS",
    "SOLVER.TEST_STEPS": "MODEL.RECURRENT.TEST_TIMESTEPS",
    "SOLVER.NEUMANN_STEPS": "MODEL.RECURRENT.NEUMANN_STEPS",
    "SOLVER.NORM_CAP": "MODEL.RECURRENT.NORM_CAP",
    "SOLVER.CAP_THRESHOLD": "MODEL.RECURRENT.CAP_THRESHOLD",
    "SOLVER.TBPTT_STEPS": "MODEL.RECURRENT.TBPTT_STEPS",
    "SOLVER.LCP_LAMBDA": "MODEL.RECURRENT.LCP_LAMBDA",
    "SOLVER.LCP_WEIGHT": "MODEL.RECURRENT.LCP_WEIGHT",
    "SOLVER.LCP_REDUCTION": "MODEL.RECURRENT.LCP_REDUCTION",
    "SOLVER.MONITOR_LCP": "MODEL.RECURRENT.MONITOR_LCP",
}


def _warn_renamed(old: str, where: str) -> str:
    new = RENAMED_KEYS[old]
    warnings.warn(
        f"config key {old} (in {where}) is deprecated: use {new}; the old name will be removed "
        "in the next version",
        FutureWarning,
        stacklevel=4,
    )
    return new


def _rename_in_mapping(data: Dict[str, Any], where: str) -> None:
    """Move old keys of a nested mapping (a loaded YAML file) to their new place, warning."""
    for old in RENAMED_KEYS:
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            node = data
            *parents, leaf = _warn_renamed(old, where).split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value


def _rename_in_overrides(overrides: Sequence[Any]) -> List[Any]:
    renamed = list(overrides)
    for i in range(0, len(renamed) - 1, 2):
        if renamed[i] in RENAMED_KEYS:
            renamed[i] = _warn_renamed(renamed[i], "the command-line overrides")
    return renamed


def _check_values(cfg: CN) -> None:
    try:
        spec_from_node(cfg.MODEL.RECURRENT, "MODEL.RECURRENT")
    except (ValueError, KeyError) as err:
        raise ConfigError(str(err.args[0])) from None
    if cfg.SOLVER.LOSS not in LOSSES:
        raise ConfigError(f"unknown SOLVER.LOSS {cfg.SOLVER.LOSS!r}; choose one of {LOSSES}")
    if cfg.DATA.SOURCE not in DATA_SOURCES:
        raise ConfigError(f"unknown DATA.SOURCE {cfg.DATA.SOURCE!r}; choose one of {DATA_SOURCES}")
    if cfg.SOLVER.LR_SCHEDULE not in ("constant", "cosine"):
        raise ConfigError(f"unknown SOLVER.LR_SCHEDULE {cfg.SOLVER.LR_SCHEDULE!r}")
    for key in ("BATCH_SIZE", "EPOCHS"):
        if getattr(cfg.SOLVER, key) < 1:
            raise ConfigError(f"SOLVER.{key} must be >= 1, got {getattr(cfg.SOLVER, key)}")


def _merge(cfg: CN, other: CN, where: str) -> None:
    try:
        cfg.merge_from_other_cfg(other)
    except KeyError as err:
        message = str(err.args[0]) if err.args else str(err)
        raise ConfigError(f"{message} (in {where})") from None
    except ValueError as err:
        raise ConfigError(f"{err} (in {where})") from None


def load_config(
    config_file: Optional[str] = None, overrides: Sequence[str] = (), freeze: bool = True
) -> CN:
    """Defaults <- YAML file (with its ``_BASE_`` chain) <- ``KEY VALUE`` overrides."""
    cfg = get_default_config()
    if config_file:
        _merge(cfg, CN(_load_yaml(config_file)), config_file)
    if overrides:
        if len(overrides) % 2:
            raise ConfigError(
                f"overrides must be KEY VALUE pairs, got an odd list: {list(overrides)}"
            )
        try:
            cfg.merge_from_list(_rename_in_overrides(overrides))
        except KeyError as err:
            message = str(err.args[0]) if err.args else str(err)
            raise ConfigError(f"{message} (in the command-line overrides)") from None
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"bad override value: {err}") from None
    _check_values(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def config_from_dump(text: str, where: str) -> CN:
    """The frozen config saved as YAML text (``cfg.dump()``, e.g. in a checkpoint) over the
    defaults; keys from an older version are renamed with a warning."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse the config in {where}: {err}") from None
    _rename_in_mapping(data, where)
    cfg = get_default_config()
    _merge(cfg, CN(data), where)
    _check_values(cfg)
    cfg.freeze()
    return cfg
