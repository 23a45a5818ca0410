"""The recurrent core: cells, the N-step engine with its learning methods, RBP and LCP.

Pure PyTorch: nothing here imports Detectron2 or the Pathfinder module.
"""

from .base import RecurrentCell, State, make_norm
from .convlstm import ConvLSTMCell
from .engine import (
    METHODS,
    RecurrenceDiagnostics,
    RecurrenceOutput,
    RecurrentEngine,
    relative_residual,
    spectral_radius,
)
from .hgru import HGRUCell, HGRUCellD2
from .lcp import lipschitz_penalty
from .neumann import NORM_CAPS, NeumannStats, neumann_series, rbp_attach

__all__ = [
    "ConvLSTMCell",
    "HGRUCell",
    "HGRUCellD2",
    "METHODS",
    "NORM_CAPS",
    "NeumannStats",
    "RecurrenceDiagnostics",
    "RecurrenceOutput",
    "RecurrentCell",
    "RecurrentEngine",
    "State",
    "lipschitz_penalty",
    "make_norm",
    "neumann_series",
    "rbp_attach",
    "relative_residual",
    "spectral_radius",
]
