"""Run-time compatibility for a pure-Python Detectron2 v0.6 on numpy 2 / Pillow >= 10.

Imported first by ``crbp_d2/rfpn/__init__.py``, so before any module of the Detectron2 front-end
imports detectron2; the core and the Pathfinder front-end never import it, so they patch nothing.
Without Detectron2 or the packages of the ``d2`` extra, importing it raises one line naming what
to install. Every patch is applied only when missing, so with upstream Detectron2 (compiled
``_C``, newer code) it is a no-op.
"""

import importlib.util
import os
import sys
import types

import numpy as np

from .._extras import require_detectron2

require_detectron2("the Detectron2 front-end (crbp_d2.rfpn.config, .modeling, .evaluation, ...)")


def _patch_numpy_aliases() -> None:
    # numpy >= 1.24 removed these aliases; Detectron2 v0.6 still uses np.int / np.float / np.str.
    for name, typ in (
        ("int", int),
        ("float", float),
        ("str", str),
        ("object", object),
        ("bool", bool),
    ):
        if name not in vars(np):
            setattr(np, name, typ)


def _patch_pillow() -> None:
    try:
        import PIL.Image
    except ImportError:
        return
    if not hasattr(PIL.Image, "LINEAR"):  # removed in Pillow 10; a v0.6 default argument uses it
        PIL.Image.LINEAR = PIL.Image.BILINEAR


def _stub_missing_extension() -> None:
    """v0.6 imports ``detectron2._C`` at module level; PyPI's sources cannot build it."""
    # Look for the compiled extension on disk instead of importing it (importing detectron2._C
    # fails on a pure-Python install, and would import detectron2 before the other patches).
    spec = importlib.util.find_spec("detectron2")
    if spec is None or "detectron2._C" in sys.modules:
        return
    for folder in spec.submodule_search_locations or []:
        if any(name.startswith("_C.") for name in os.listdir(folder)):
            return
    stub = types.ModuleType("detectron2._C")

    def _missing(name: str):
        raise AttributeError(
            f"detectron2._C.{name}: the compiled Detectron2 extension is not available "
            "(deformable conv, rotated boxes and the fast COCO evaluator need it)"
        )

    stub.__getattr__ = _missing  # type: ignore[attr-defined]
    stub.get_compiler_version = lambda: "detectron2._C not built (pure-Python install)"
    stub.get_cuda_version = lambda: "not available"
    stub.has_cuda = lambda: False
    sys.modules["detectron2._C"] = stub


if importlib.util.find_spec("detectron2") is not None:
    _patch_numpy_aliases()
    _patch_pillow()
    _stub_missing_extension()
