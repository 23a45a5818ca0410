"""The recurrent core: cells, the N-step engine with its learning methods, RBP and LCP.

Pure PyTorch: nothing here imports Detectron2 or the Pathfinder module.
"""

from .base import RecurrentCell, State, cell_init_state, cell_output, cell_prepare, make_norm
from .convlstm import ConvLSTMCell
from .diagnostics import RecurrenceDiagnostics, relative_residual, spectral_radius
from .engine import NonFiniteStateError, RecurrenceOutput, RecurrentEngine
from .hgru import HGRUCell, MaskHeadHGRUCell
from .lcp import LCP_REDUCTIONS, lipschitz_penalty
from .neumann import NORM_CAPS, NeumannStats, neumann_series, rbp_attach
from .solvers import SOLVERS, SolverStats
from .spec import (
    CONFIG_KEYS,
    LCP_METHODS,
    METHODS,
    NEUMANN_METHODS,
    EngineSpec,
    SpecError,
    engine_config_defaults,
    spec_from_node,
)

__all__ = [
    "CONFIG_KEYS",
    "ConvLSTMCell",
    "EngineSpec",
    "HGRUCell",
    "LCP_METHODS",
    "LCP_REDUCTIONS",
    "METHODS",
    "MaskHeadHGRUCell",
    "NEUMANN_METHODS",
    "NonFiniteStateError",
    "SOLVERS",
    "SolverStats",
    "NORM_CAPS",
    "NeumannStats",
    "RecurrenceDiagnostics",
    "RecurrenceOutput",
    "RecurrentCell",
    "RecurrentEngine",
    "SpecError",
    "State",
    "cell_init_state",
    "cell_output",
    "cell_prepare",
    "engine_config_defaults",
    "lipschitz_penalty",
    "make_norm",
    "neumann_series",
    "rbp_attach",
    "relative_residual",
    "spec_from_node",
    "spectral_radius",
]
