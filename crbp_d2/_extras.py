"""One-line errors for a front-end imported without its install extra.

``pip install crbp-d2`` brings torch and numpy only (enough for :mod:`crbp_d2.recurrent`); each
front-end checks, before importing anything heavy, that the packages of its extra are present.
"""

from __future__ import annotations

import importlib.util
from typing import Dict, Sequence

__all__ = ["EXTRA_MODULES", "MissingExtraError", "require_detectron2", "require_extra"]

# extra -> (import name, distribution name) of what its front-end imports (setup.py lists the
# pinned distributions; this is what is checked at import time)
EXTRA_MODULES: Dict[str, Sequence[tuple]] = {
    "pathfinder": (
        ("cv2", "opencv-python-headless"),
        ("scipy", "scipy"),
        ("yacs", "yacs"),
        ("yaml", "pyyaml"),
        ("tqdm", "tqdm"),
        ("PIL", "Pillow"),
    ),
    "d2": (
        ("cv2", "opencv-python-headless"),
        ("scipy", "scipy"),
        ("yacs", "yacs"),
        ("PIL", "Pillow"),
        ("torchvision", "torchvision"),
        ("fvcore", "fvcore"),
        ("pycocotools", "pycocotools"),
    ),
    "torchvision": (
        ("torchvision", "torchvision"),
        ("pycocotools", "pycocotools"),
        ("PIL", "Pillow"),
    ),
    "onnx": (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript")),
}


class MissingExtraError(ImportError):
    """A front-end's packages are not installed; the message names the extra to install."""


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` (one line) if a package of ``extra`` is missing.

    Args:
        extra: a key of :data:`EXTRA_MODULES`.
        what: the module or feature that needs it, for the message.
    """
    missing = [dist for module, dist in EXTRA_MODULES[extra] if _absent(module)]
    if missing:
        raise MissingExtraError(
            f"{what} needs {', '.join(missing)}: pip install 'crbp-d2[{extra}]'"
        )


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ValueError:  # a module set to None in sys.modules (blocked)
        return True


def require_detectron2(what: str) -> None:
    """:func:`require_extra` ``d2``, then Detectron2 itself (not on PyPI, so no extra has it)."""
    require_extra("d2", what)
    if _absent("detectron2"):
        raise MissingExtraError(
            f"{what} needs Detectron2 v0.6, which is not on PyPI: bash tools/install_detectron2.sh"
        )
