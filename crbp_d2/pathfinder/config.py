"""Configuration of Pathfinder experiments: a yacs CfgNode with defaults, YAML files with
``_BASE_`` inheritance, and ``KEY VALUE`` overrides from the command line.

Every key must exist in :func:`get_default_config`; an unknown key, a value of the wrong type or
a missing base file raises :class:`ConfigError` naming it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

from crbp_d2.recurrent import METHODS

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
    cfg.MODEL.GATE_TIMESCALE = 8.0  # T of the chronos init (authors: U(1, 7)); 0 = SOLVER.STEPS
    cfg.MODEL.INHIBITION_SOFTPLUS = True
    cfg.MODEL.OUTPUT_SOFTPLUS = True
    cfg.MODEL.LSTM_IMPLICIT_STATE = "joint"  # joint | h_only (authors)
    cfg.MODEL.CNN_LAYERS = 6

    cfg.SOLVER = CN()
    cfg.SOLVER.METHOD = "crbp"  # bptt | tbptt | rbp | cbptt | crbp
    cfg.SOLVER.STEPS = 20  # N in training
    cfg.SOLVER.TEST_STEPS = 0  # steps at evaluation (0: = STEPS)
    cfg.SOLVER.NEUMANN_STEPS = 15
    cfg.SOLVER.NORM_CAP = "none"  # none (paper) | pathfinder (authors' code) | detectron2
    cfg.SOLVER.CAP_THRESHOLD = 1.0
    cfg.SOLVER.TBPTT_STEPS = 0  # 0: half of N
    cfg.SOLVER.LCP_LAMBDA = 0.9
    cfg.SOLVER.LCP_WEIGHT = 10.0
    cfg.SOLVER.LCP_REDUCTION = "mean"
    cfg.SOLVER.MONITOR_LCP = True  # log the (detached) LCP under bptt/tbptt/rbp too
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


def _check_values(cfg: CN) -> None:
    if cfg.SOLVER.METHOD not in METHODS:
        raise ConfigError(f"unknown SOLVER.METHOD {cfg.SOLVER.METHOD!r}; choose one of {METHODS}")
    if cfg.SOLVER.LOSS not in LOSSES:
        raise ConfigError(f"unknown SOLVER.LOSS {cfg.SOLVER.LOSS!r}; choose one of {LOSSES}")
    if cfg.DATA.SOURCE not in DATA_SOURCES:
        raise ConfigError(f"unknown DATA.SOURCE {cfg.DATA.SOURCE!r}; choose one of {DATA_SOURCES}")
    if cfg.SOLVER.LR_SCHEDULE not in ("constant", "cosine"):
        raise ConfigError(f"unknown SOLVER.LR_SCHEDULE {cfg.SOLVER.LR_SCHEDULE!r}")
    for key in ("BATCH_SIZE", "EPOCHS", "STEPS"):
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
            cfg.merge_from_list(list(overrides))
        except KeyError as err:
            message = str(err.args[0]) if err.args else str(err)
            raise ConfigError(f"{message} (in the command-line overrides)") from None
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"bad override value: {err}") from None
    _check_values(cfg)
    if freeze:
        cfg.freeze()
    return cfg
