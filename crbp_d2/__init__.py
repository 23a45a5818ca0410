"""crbp-d2: contractor recurrent back-propagation (C-RBP).

``crbp_d2.recurrent`` is pure PyTorch. Importing ``crbp_d2`` first applies the Detectron2 v0.6
compatibility shim, and, when Detectron2 is importable, registers the recurrent mask head and the
built-in datasets (import side effects, as Detectron2 projects do).
"""
from . import _d2compat  # noqa: F401  (must run before anything imports detectron2)

__version__ = "0.1.0"
