"""crbp-d2: contractor recurrent back-propagation (C-RBP).

``crbp_d2.recurrent`` is pure PyTorch. Importing ``crbp_d2`` first applies the Detectron2 v0.6
compatibility shim, then arranges for the Detectron2 parts (the recurrent mask head and the
built-in datasets) to be registered as soon as Detectron2 is imported, so the registry knows the
head without Pathfinder-only users paying for a Detectron2 import.
"""

from . import (
    _d2compat,  # noqa: F401  (must run before anything imports detectron2)
    _lazy_d2,
)

__version__ = "0.1.0"

_lazy_d2.install()
