"""Configuration of Pathfinder experiments: a yacs CfgNode with defaults, YAML files with
``_BASE_`` inheritance, and ``KEY VALUE`` overrides from the command line.

Every key must exist in :func:`get_default_config`; an unknown key, a value of the wrong type or
a missing base file raises :class:`ConfigError` naming it.

The recurrence (steps, learning method, Neumann series, LCP) is described by ``MODEL.RECURRENT``,
whose keys are those of the Detectron2 head's ``MODEL.ROI_MASK_HEAD.RECURRENT``
(:mod:`crbp_d2.recurrent.spec`). The keys that lived under ``SOLVER`` before (``SOLVER.STEPS``,
``SOLVER.METHOD``, ...) are still read, with a ``FutureWarning`` naming the new key; they will be
removed in the next version. So are the cell's keys that sat beside ``MODEL.RECURRENT`` before
(``MODEL.ARCH``, now ``MODEL.RECURRENT.CELL``; ``MODEL.KERNEL_SIZE``, ... now
``MODEL.RECURRENT.KERNEL_SIZE``, ...: :data:`CELL_KEYS_MOVED`), where the Detectron2 head keeps
them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

from crbp_d2.recurrent import engine_config_defaults, spec_from_node
from crbp_d2.utils.configs import has_key, unknown_key_message, yaml_error_message

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
    cfg.OUTPUT_DIR = "output/pathfinder/default"  # checkpoints, logs, config.yaml, tb/
    cfg.SEED = 0  # model init and training order (the data have DATA.SEED / DATA.TEST_SEED)
    cfg.DEVICE = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    cfg.NUM_THREADS = 0  # torch.set_num_threads (0: leave as is)

    cfg.MODEL = CN()
    cfg.MODEL.CHANNELS = 25  # input filters = hidden channels
    cfg.MODEL.INPUT_KERNEL = 7  # side of the input filter bank
    cfg.MODEL.INPUT_INIT = "gabor_dog"  # gabor_dog (paper) | gabor_disk (authors' npy) | random
    cfg.MODEL.INPUT_SQUARE = True  # square the input conv's output (the authors' code)
    cfg.MODEL.READOUT_NORM = "BN"  # BN | GN | none
    cfg.MODEL.READOUT_BIAS = "zero"  # zero | authors (equal biases) | prior (p(contour)=0.01)
    cfg.MODEL.CNN_LAYERS = 6  # k x k conv layers of the CNN control (RECURRENT.CELL cnn)
    # The recurrence: the same keys as the Detectron2 head's MODEL.ROI_MASK_HEAD.RECURRENT
    # (TIMESTEPS, TEST_TIMESTEPS, METHOD, NEUMANN_STEPS, LCP_WEIGHT, FORWARD_SOLVER, ...), each
    # documented on its field of EngineSpec in crbp_d2/recurrent/spec.py (CONFIG_KEYS maps key ->
    # field; 0 means "unset" for TEST_TIMESTEPS, TBPTT_STEPS and the tolerances). Defaults: the
    # paper's C-RBP-20 with the Pathfinder code's LCP (weight 10 on the mean penalty), monitored
    # LCP.
    cfg.MODEL.RECURRENT = CN(engine_config_defaults(LCP_WEIGHT=10.0, MONITOR_LCP=True))
    # The cell and its keys, in the node as on the Detectron2 side (MODEL.ROI_MASK_HEAD.RECURRENT:
    # CELL, KERNEL_SIZE, CELL_NORM, CELL_NORM_GROUPS, CHRONOS_LOG); MODEL.ARCH, MODEL.KERNEL_SIZE,
    # ... before (still read, with a FutureWarning: CELL_KEYS_MOVED).
    node = cfg.MODEL.RECURRENT
    # hgru | convlstm, or a feedforward control in the cell's place: cnn (CNN_LAYERS k x k convs)
    # | ff_hgru (TIMESTEPS hGRU layers with their own weights)
    node.CELL = "hgru"
    node.KERNEL_SIZE = 15  # hGRU / convLSTM / CNN kernel (3, 5, 9 in the kernel sweep)
    node.CELL_NORM = "BN"  # BN (batch stats always, as the authors) | GN | IN | none
    node.CELL_NORM_GROUPS = 1  # groups of GN
    node.CHRONOS_LOG = True  # intended log(U(1, T-1)) gate biases; False = authors' code
    node.GATE_TIMESCALE = 8.0  # T of the chronos init (authors: U(1, 7)); 0 = TIMESTEPS
    node.INHIBITION_SOFTPLUS = True  # the Pathfinder cell's extra softplus on inhibition
    node.OUTPUT_SOFTPLUS = True  # ... and on the output
    node.LSTM_IMPLICIT_STATE = "joint"  # joint (h, c) | h_only (authors' convLSTM RBP/LCP)

    cfg.SOLVER = CN()
    cfg.SOLVER.LOSS = "ce"  # ce (paper) | focal (authors' code, gamma FOCAL_GAMMA)
    cfg.SOLVER.FOCAL_GAMMA = 2.0  # gamma of the focal loss
    cfg.SOLVER.CONTOUR_WEIGHT = 1.0  # class weight of the contour class (background 1)
    cfg.SOLVER.LR = 3e-4  # paper; the authors' logs used 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.0  # Adam's weight decay
    cfg.SOLVER.LR_SCHEDULE = "constant"  # constant | cosine (to 0 over all iterations)
    cfg.SOLVER.GRAD_CLIP = 0.0  # max gradient norm (0: off; the authors do not clip)
    cfg.SOLVER.BATCH_SIZE = 32  # global batch (split over DDP processes)
    cfg.SOLVER.EPOCHS = 20  # the unit of evaluation, checkpoints and --resume
    cfg.SOLVER.MAX_ITERS_PER_EPOCH = 0  # 0: the whole training set each epoch
    cfg.SOLVER.AMP = False  # autocast (CUDA only)
    cfg.SOLVER.AMP_DTYPE = "bfloat16"  # bfloat16 | float16
    cfg.SOLVER.LOG_PERIOD = 10  # iterations between CSV/TensorBoard rows

    cfg.DATA = CN()
    # on_the_fly (generated when read) | memory (generated once, kept) | disk (the
    # generate_pathfinder output under ROOT)
    cfg.DATA.SOURCE = "on_the_fly"
    cfg.DATA.ROOT = "datasets/pathfinder"  # root of generated files (SOURCE disk)
    cfg.DATA.TRAIN_LENGTH = 14  # contour length (dashes) of the training images
    cfg.DATA.TEST_LENGTH = 14  # ... and of the test images
    cfg.DATA.TRAIN_SIZE = 1000  # training images (disk: 0 = all of the split)
    cfg.DATA.TEST_SIZE = 256  # test images (disk: 0 = all of the split)
    cfg.DATA.IMAGE_SIZE = 150  # network input side (the paper: 300 -> 150 bicubic)
    cfg.DATA.CANVAS_SIZE = 300  # generator canvas side
    cfg.DATA.RANDOM_FLIP = True  # the same random flip of image and label, test images too
    cfg.DATA.NUM_WORKERS = 0  # DataLoader worker processes
    cfg.DATA.SEED = 0  # data seed of the training images (and of their flips)
    cfg.DATA.TEST_SEED = 1  # data seed of the test images (and of flips)
    cfg.DATA.GENERATOR = CN(new_allowed=True)  # any PathfinderParams field, e.g. num_distractors

    cfg.TEST = CN()
    cfg.TEST.BATCH_SIZE = 32  # the hGRU's BN uses batch statistics: results depend on it
    cfg.TEST.EVAL_PERIOD = 1  # epochs between evaluations
    cfg.TEST.SPECTRAL_RADIUS_ITERS = 20  # power iterations of rho(dF/dh) per evaluation (0: off)
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
            raise ConfigError(yaml_error_message(path, err)) from None
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


# The cell's keys, beside MODEL.RECURRENT before, now in it (the Detectron2 head's place).
CELL_KEYS_MOVED: Dict[str, str] = {
    "MODEL.ARCH": "MODEL.RECURRENT.CELL",
    **{
        f"MODEL.{key}": f"MODEL.RECURRENT.{key}"
        for key in (
            "KERNEL_SIZE",
            "CELL_NORM",
            "CELL_NORM_GROUPS",
            "CHRONOS_LOG",
            "GATE_TIMESCALE",
            "INHIBITION_SOFTPLUS",
            "OUTPUT_SOFTPLUS",
            "LSTM_IMPLICIT_STATE",
        )
    },
}
# old key -> new key (read with a FutureWarning for one version)
RENAMED_KEYS: Dict[str, str] = {
    **CELL_KEYS_MOVED,
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
    if cfg.SOLVER.MAX_ITERS_PER_EPOCH < 0:
        raise ConfigError(
            f"SOLVER.MAX_ITERS_PER_EPOCH must be >= 0 (0: every batch), got "
            f"{cfg.SOLVER.MAX_ITERS_PER_EPOCH}"
        )
    extra = list(cfg.TEST.EXTRA_STEPS)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in extra):
        raise ConfigError(f"TEST.EXTRA_STEPS must be step counts >= 0, got {extra}")


def _merge(cfg: CN, other: CN, where: str) -> None:
    try:
        cfg.merge_from_other_cfg(other)
    except KeyError as err:
        message = str(err.args[0]) if err.args else str(err)
        raise ConfigError(unknown_key_message(cfg, message, where)) from None
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
        renamed = _rename_in_overrides(overrides)
        for key in renamed[0::2]:
            if not has_key(cfg, key):
                raise ConfigError(unknown_key_message(cfg, key, "the command-line overrides"))
        try:
            cfg.merge_from_list(renamed)
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


def flat_config(node, prefix: str = "") -> Dict[str, Any]:
    """``{"MODEL.RECURRENT.TIMESTEPS": 20, ...}`` of a config node (dict values flattened too)."""
    flat: Dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_differences(old: CN, new: CN, ignore: Sequence[str] = ("OUTPUT_DIR",)) -> List[str]:
    """``"KEY old -> new"`` for each setting that differs between two configs (sorted; keys
    in ``ignore`` and under an ignored prefix left out)."""
    before, after = flat_config(old), flat_config(new)
    lines = []
    for key in sorted(set(before) | set(after)):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        if before.get(key) != after.get(key):
            lines.append(f"{key} {before.get(key)!r} -> {after.get(key)!r}")
    return lines
