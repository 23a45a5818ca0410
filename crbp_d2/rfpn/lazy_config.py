"""LazyConfig pieces of the recurrent mask head, with the yacs config's defaults.

The defaults of the head live in one place, ``add_crbp_config`` (the yacs node
``MODEL.ROI_MASK_HEAD.RECURRENT``). A LazyConfig file builds the head from the same upper-case
keys, so that both config systems give the same model (``tests/test_d2_lazy.py`` checks it).
``configs/lazy/R-FPN-R50-CRBP.py`` sets ``model.roi_heads.mask_head`` to such a head (width and
class count interpolated from the model); a key is then overridden on the command line as
``model.roi_heads.mask_head.engine.TIMESTEPS=10``. Standalone:

>>> from crbp_d2.rfpn.lazy_config import build_engine_from_keys, recurrent_defaults  # first
>>> from detectron2.config import LazyCall as L, instantiate
>>> from crbp_d2.rfpn.modeling import RecurrentMaskHead
>>> mask_head = L(RecurrentMaskHead)(
...     engine=L(build_engine_from_keys)(width=32, **recurrent_defaults()),
...     num_classes=3,
...     readout_norm="${.engine.READOUT_NORM}",
...     lcp_weight="${.engine.LCP_WEIGHT}",
... )
>>> mask_head.engine.TIMESTEPS = 10  # what ...mask_head.engine.TIMESTEPS=10 does
>>> head = instantiate(mask_head)
>>> head.engine.steps, head.engine.spec.method, head.lcp_weight
(10, 'crbp', 0.001)
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence

from detectron2.config import CfgNode, get_cfg

from ..recurrent import RecurrentEngine
from ..utils.configs import unknown_key_message
from .config import add_crbp_config
from .modeling.recurrent_mask_head import build_recurrent_engine

__all__ = [
    "TRAINING_KEYS",
    "build_engine_from_keys",
    "check_lazy_overrides",
    "recurrent_defaults",
    "recurrent_head_cfg",
]

# Old keys of the yacs node that are about training, not the head (now ``SOLVER.*`` in a yacs
# config); in a LazyConfig they are ``train.*``.
TRAINING_KEYS: Dict[str, str] = {"TRAIN_ONLY_HEAD": "train.train_only_head"}
_NODE = "MODEL.ROI_MASK_HEAD.RECURRENT"


def recurrent_defaults() -> Dict[str, Any]:
    """The head's keys of ``MODEL.ROI_MASK_HEAD.RECURRENT`` with the defaults of
    ``add_crbp_config`` (a new dict; the training keys of :data:`TRAINING_KEYS` left out)."""
    node = add_crbp_config(get_cfg()).MODEL.ROI_MASK_HEAD.RECURRENT
    return {k: v for k, v in node.items() if k not in TRAINING_KEYS}


def recurrent_head_cfg(width: int, **keys: Any) -> CfgNode:
    """A yacs config with the recurrent head of width ``width`` (``CONV_DIM``) and the given
    ``MODEL.ROI_MASK_HEAD.RECURRENT`` keys, the others at their defaults; validated.

    Raises ``KeyError`` naming an unknown key (with the closest ones) and ``ValueError`` naming an
    invalid value, as for the yacs configs.
    """
    cfg = add_crbp_config(get_cfg())
    head = cfg.MODEL.ROI_MASK_HEAD
    head.NAME = "RecurrentMaskHead"
    head.CONV_DIM = int(width)
    node = head.RECURRENT
    for key, value in keys.items():
        if key in TRAINING_KEYS:
            raise KeyError(
                f"{_NODE}.{key} is a training setting, not the head's: in a LazyConfig set "
                f"{TRAINING_KEYS[key]} instead (SOLVER.{key} in a yacs config)"
            )
        if key not in node:
            raise KeyError(unknown_key_message(cfg, f"{_NODE}.{key}", "build_engine_from_keys"))
        default = node[key]
        if isinstance(default, bool) != isinstance(value, bool):
            raise ValueError(f"{_NODE}.{key} = {value!r}: must be True or False like its default")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        node[key] = value
    return cfg


def build_engine_from_keys(width: int, **keys: Any) -> RecurrentEngine:
    """The recurrent engine (cell + learning method) of the mask head from the upper-case keys of
    ``MODEL.ROI_MASK_HEAD.RECURRENT`` (``TIMESTEPS=20, METHOD="crbp", CELL="hgru", ...``; keys not
    given take ``add_crbp_config``'s defaults), for RoI features of ``width`` channels.

    Keys the engine does not use (``READOUT_NORM``: the head's ``readout_norm``) are accepted,
    so that a LazyConfig can hold the whole node in one place. The result is the engine a yacs
    config with the same keys builds (``build_recurrent_engine``).
    """
    return build_recurrent_engine(recurrent_head_cfg(width, **keys), int(width))


def _config_keys(cfg: Any, prefix: str = "") -> Iterable[str]:
    from omegaconf import DictConfig, ListConfig

    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            yield dotted
            yield from _config_keys(cfg._get_node(key), dotted)
    elif isinstance(cfg, ListConfig):
        for index in range(len(cfg)):
            dotted = f"{prefix}.{index}"
            yield dotted
            yield from _config_keys(cfg._get_node(index), dotted)


def check_lazy_overrides(cfg: Any, overrides: Sequence[str]) -> List[str]:
    """Check ``key=value`` overrides of a LazyConfig before applying them: each must have a
    ``=`` (``ValueError``) and its key must exist (``KeyError`` naming it with the closest
    existing keys: Detectron2 would add a misspelled key silently and nothing would read it).
    ``+key=value`` (Hydra's syntax for adding a key) adds a new key on purpose. Returns the keys.
    """
    from omegaconf import OmegaConf

    keys = []
    for override in overrides:
        key, sep, _ = override.partition("=")
        key = key.strip()
        adding = key.startswith("+")
        key = key.lstrip("+")
        if not sep or not key:
            raise ValueError(f"config override {override!r} is not of the form key=value")
        found = OmegaConf.select(
            cfg, key, default=_MISSING, throw_on_missing=False, throw_on_resolution_failure=False
        )
        if found is _MISSING and not adding:
            raise KeyError(_unknown_lazy_key(cfg, key))
        keys.append(key)
    return keys


class _Missing:
    pass


_MISSING = _Missing()


def _unknown_lazy_key(cfg: Any, key: str) -> str:
    import difflib

    known = list(_config_keys(cfg))
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    parent = key.rpartition(".")[0]
    if not close and parent:
        siblings = [k for k in known if k.rpartition(".")[0] == parent]
        close = difflib.get_close_matches(key, siblings, n=3, cutoff=0.3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"Non-existent config key: {key} (in the command-line overrides).{hint}"
