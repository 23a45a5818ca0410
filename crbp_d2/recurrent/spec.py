"""One validated description of the recurrence, shared by both front-ends.

:class:`EngineSpec` holds everything that says *how* a cell is run and trained (steps, learning
method, Neumann series, LCP, halting); it validates itself, and :meth:`RecurrentEngine.from_spec`
builds the engine from it. The cell itself is front-end specific (the Pathfinder hGRU is not the
mask-head hGRU) and is built by each front-end from its own keys.

Both front-ends keep the spec in one config node with the same upper-case key names (the
Detectron2 node ``MODEL.ROI_MASK_HEAD.RECURRENT``, the Pathfinder node ``MODEL.RECURRENT``):
:func:`engine_config_defaults` gives the keys and their defaults and :func:`spec_from_node`
reads and validates such a node, naming the offending key in its error. Nothing here imports a
config library: a node is any mapping.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

from .lcp import LCP_REDUCTIONS
from .neumann import NORM_CAPS
from .solvers import SOLVERS

METHODS = ("bptt", "tbptt", "rbp", "cbptt", "crbp", "jfb", "cjfb", "phantom", "cphantom")
LCP_METHODS = ("cbptt", "crbp", "cjfb", "cphantom")  # the methods that train the LCP
NEUMANN_METHODS = ("rbp", "crbp")  # the methods whose backward runs the Neumann series
FIXED_POINT_METHODS = ("rbp", "crbp", "jfb", "cjfb")  # gradients that assume h_N is a fixed point
BPTT_METHODS = ("bptt", "cbptt")  # unroll all N steps with the full graph
PHANTOM_METHODS = ("phantom", "cphantom")  # a few damped tracked steps after N - k untracked
NONFINITE_ACTIONS = ("error", "warn")

# config key -> EngineSpec field; the config value "0" means "unset" for the keys in _ZERO_IS_UNSET
CONFIG_KEYS: Dict[str, str] = {
    "TIMESTEPS": "steps",
    "TEST_TIMESTEPS": "test_steps",
    "METHOD": "method",
    "TBPTT_STEPS": "tbptt_steps",
    "NEUMANN_STEPS": "neumann_steps",
    "NORM_CAP": "norm_cap",
    "CAP_THRESHOLD": "cap_threshold",
    "LCP_WEIGHT": "lcp_weight",
    "LCP_LAMBDA": "lcp_lambda",
    "LCP_REDUCTION": "lcp_reduction",
    "MONITOR_LCP": "monitor_lcp",
    "HALT_TOLERANCE": "halt_tolerance",
    "NEUMANN_TOL": "neumann_tol",
    "CAP_RELATIVE": "cap_relative",
    "PHANTOM_STEPS": "phantom_steps",
    "PHANTOM_DAMPING": "phantom_damping",
    "FORWARD_SOLVER": "solver",
    "SOLVER_TOL": "solver_tol",
    "ANDERSON_WINDOW": "anderson_window",
    "ANDERSON_DAMPING": "anderson_damping",
    "FIDELITY_PERIOD": "fidelity_period",
    "NONFINITE": "nonfinite",
    "CONVERGENCE_TOL": "convergence_tol",
    "COMPILE_CELL": "compile_cell",
    "CUDA_GRAPH": "cuda_graph",
    "AUTOCAST_BF16": "autocast_bf16",
}
# deprecated key -> its new name: read (when set, i.e. not "") with a FutureWarning naming the
# new key. The defaults hold the old key as "" so that yacs (which rejects unknown keys) still
# merges old config files on both front-ends.
DEPRECATED_KEYS: Dict[str, str] = {"SOLVER": "FORWARD_SOLVER"}
_ZERO_IS_UNSET = ("TEST_TIMESTEPS", "TBPTT_STEPS", "HALT_TOLERANCE", "NEUMANN_TOL", "SOLVER_TOL")
_FLOAT_KEYS = (
    "CAP_THRESHOLD",
    "LCP_WEIGHT",
    "LCP_LAMBDA",
    "HALT_TOLERANCE",
    "NEUMANN_TOL",
    "PHANTOM_DAMPING",
    "SOLVER_TOL",
    "ANDERSON_DAMPING",
    "CONVERGENCE_TOL",
)


class SpecError(ValueError):
    """An invalid engine setting; ``field`` names the :class:`EngineSpec` field."""

    def __init__(self, field: str, value: Any, why: str) -> None:
        super().__init__(f"{field} = {value!r}: {why}")
        self.field, self.value, self.why = field, value, why


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class EngineSpec:
    """How a recurrent cell is run and trained.

    Attributes:
        steps: N, steps in training (authors: TIMESTEPS); for the methods that run steps
            without a graph, the budget of cell evaluations (a solver may stop earlier).
        test_steps: steps in eval mode (None: ``steps``).
        method: ``bptt | tbptt | rbp | cbptt | crbp`` (authors: GRAD = bptt | rbp | cbp), or the
            cheaper gradients ``jfb`` (Jacobian-free backprop: N - 1 steps without a graph, one
            tracked step, no Neumann terms) and ``phantom`` (the last ``phantom_steps`` steps
            tracked, damped: h <- (1 - lambda) h + lambda F(h)); ``cjfb`` / ``cphantom`` add the
            LCP to them.
        tbptt_steps: k, steps tracked by ``tbptt`` (None: half of N, rounded up).
        neumann_steps: K >= 1, vector-Jacobian products of the RBP backward (an upper bound
            when ``neumann_tol`` is set).
        neumann_tol: stop the Neumann series once ||(J^T)^k g0|| <= tol ||g0|| (None: K terms).
        norm_cap: ``none`` (the paper) | ``pathfinder`` | ``detectron2`` (the authors' two rules).
        cap_threshold: norm bound of the cap: absolute (1.0 in the authors' code), or relative
            to ||g0|| when ``cap_relative`` (invariant to scaling the loss, e.g. by AMP).
        cap_relative: see ``cap_threshold``.
        lcp_weight: weight of the LCP in the loss (read by the front-ends; authors: XI).
        lcp_lambda: lambda of the hinge relu(1^T J - lambda)^2, in [0, 1) (authors: TAU).
        lcp_reduction: ``mean`` (Pathfinder code) | ``sum`` (Detectron2 code).
        monitor_lcp: also compute the LCP, detached, under bptt/tbptt/rbp (for logging).
        halt_tolerance: at inference, stop once every sample's relative residual is below it.
        phantom_steps: k >= 1, the damped steps ``phantom`` tracks (Geng et al. 2021: 5).
        phantom_damping: lambda in (0, 1] of the damped steps (Geng et al. 2021: 0.5).
        solver: ``iterate | anderson``, the forward solver of the steps without a graph, in
            training and at inference (config key FORWARD_SOLVER; SOLVER before).
        solver_tol: stop those steps once the relative residual is at most this (None: run the
            whole budget); ``steps`` is then the budget of cell evaluations.
        anderson_window: m >= 1, iterates Anderson combines.
        anderson_damping: beta in (0, 1] of the Anderson update.
        fidelity_period: log the gradient fidelity every this many training iterations (0: off;
            read by the trainers).
        nonfinite: what a non-finite state does: ``error`` (raise, naming the step and the
            method) or ``warn`` (warn and go on).
        convergence_tol: a state whose relative residual at N is above this is flagged as not
            converged in the diagnostics; the fixed-point methods (rbp, crbp, jfb, cjfb) also
            warn once, since their gradient assumes a fixed point.
        compile_cell: run the steps without a graph and the Neumann VJPs through a
            ``torch.compile``-d copy of the cell step (regional compilation; the tracked step
            and the LCP's double backward stay eager). Falls back to eager, logging why, where
            compiling fails. See :mod:`crbp_d2.recurrent.compiled`.
        cuda_graph: on CUDA, with plain iteration and no ``solver_tol`` (a fixed N), replay the
            steps without a graph from a captured CUDA graph (RoI batches padded to buckets);
            see :mod:`crbp_d2.recurrent.cuda_graph`. Ignored (logged once) on other devices.
        autocast_bf16: run the steps without a graph (training and inference) and the Neumann
            VJPs under bfloat16 autocast on a CPU with native bfloat16 (``avx512_bf16`` or
            ``amx_bf16``); the state between steps, the Neumann sum, the tracked step and the
            LCP stay float32. Elsewhere float32, logged once. See :mod:`crbp_d2.recurrent.bf16`.
    """

    steps: int = 20
    test_steps: Optional[int] = None
    method: str = "crbp"
    tbptt_steps: Optional[int] = None
    neumann_steps: int = 15
    norm_cap: str = "none"
    cap_threshold: float = 1.0
    lcp_weight: float = 0.0
    lcp_lambda: float = 0.9
    lcp_reduction: str = "mean"
    monitor_lcp: bool = False
    halt_tolerance: Optional[float] = None
    neumann_tol: Optional[float] = None
    cap_relative: bool = False
    phantom_steps: int = 5
    phantom_damping: float = 0.5
    solver: str = "iterate"
    solver_tol: Optional[float] = None
    anderson_window: int = 5
    anderson_damping: float = 1.0
    fidelity_period: int = 0
    nonfinite: str = "error"
    convergence_tol: float = 0.05
    compile_cell: bool = False
    cuda_graph: bool = False
    autocast_bf16: bool = False

    def __post_init__(self) -> None:
        _check_positive_int("steps", self.steps)
        if self.test_steps is not None:
            _check_positive_int("test_steps", self.test_steps)
        if self.tbptt_steps is not None:
            _check_positive_int("tbptt_steps", self.tbptt_steps)
        _check_positive_int("neumann_steps", self.neumann_steps)
        _check_choice("method", self.method, METHODS)
        _check_choice("norm_cap", self.norm_cap, NORM_CAPS)
        _check_choice("lcp_reduction", self.lcp_reduction, LCP_REDUCTIONS)
        if not _is_number(self.cap_threshold) or self.cap_threshold <= 0:
            raise SpecError("cap_threshold", self.cap_threshold, "must be a number > 0")
        if not _is_number(self.lcp_weight) or self.lcp_weight < 0:
            raise SpecError("lcp_weight", self.lcp_weight, "must be a number >= 0")
        if not _is_number(self.lcp_lambda) or not 0.0 <= self.lcp_lambda < 1.0:
            raise SpecError(
                "lcp_lambda",
                self.lcp_lambda,
                "must be in [0, 1) so that the penalty asks for a contraction",
            )
        if not isinstance(self.monitor_lcp, bool):
            raise SpecError("monitor_lcp", self.monitor_lcp, "must be True or False")
        for name in ("halt_tolerance", "neumann_tol", "solver_tol"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise SpecError(name, value, "must be a number > 0 (or unset)")
        if not isinstance(self.cap_relative, bool):
            raise SpecError("cap_relative", self.cap_relative, "must be True or False")
        _check_positive_int("phantom_steps", self.phantom_steps)
        _check_positive_int("anderson_window", self.anderson_window)
        for name in ("phantom_damping", "anderson_damping"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 < value <= 1.0:
                raise SpecError(name, value, "must be in (0, 1]")
        _check_choice("solver", self.solver, SOLVERS)
        _check_choice("nonfinite", self.nonfinite, NONFINITE_ACTIONS)
        if not _is_number(self.convergence_tol) or self.convergence_tol <= 0:
            raise SpecError("convergence_tol", self.convergence_tol, "must be a number > 0")
        for name in ("compile_cell", "cuda_graph", "autocast_bf16"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(name, getattr(self, name), "must be True or False")
        if not _is_int(self.fidelity_period) or self.fidelity_period < 0:
            raise SpecError("fidelity_period", self.fidelity_period, "must be an integer >= 0")

    @property
    def uses_lcp(self) -> bool:
        """True for the methods that train the LCP (``LCP_METHODS``)."""
        return self.method in LCP_METHODS

    @property
    def uses_neumann(self) -> bool:
        """True for the methods whose backward runs the Neumann series (``NEUMANN_METHODS``)."""
        return self.method in NEUMANN_METHODS

    @property
    def assumes_fixed_point(self) -> bool:
        """True for the methods whose gradient assumes h_N is a fixed point
        (``FIXED_POINT_METHODS``)."""
        return self.method in FIXED_POINT_METHODS

    @property
    def eval_steps(self) -> int:
        """Steps in eval mode."""
        return self.test_steps if self.test_steps is not None else self.steps

    def replace(self, **changes: Any) -> "EngineSpec":
        """A copy with some fields changed (validated again)."""
        return EngineSpec(**{**asdict(self), **changes})


def _check_positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise SpecError(name, value, "must be an integer >= 1")


def _check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise SpecError(name, value, f"unknown value; choose one of {tuple(choices)}")


def engine_config_defaults(**overrides: Any) -> Dict[str, Any]:
    """The engine keys of a config node with their defaults (0 = unset where it applies).

    ``overrides`` change defaults by key name (e.g. ``LCP_REDUCTION="sum"`` for Detectron2).
    """
    spec = EngineSpec()
    values: Dict[str, Any] = {}
    for key, name in CONFIG_KEYS.items():
        value = getattr(spec, name)
        values[key] = (0.0 if key in _FLOAT_KEYS else 0) if value is None else value
    values.update({old: "" for old in DEPRECATED_KEYS})
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise KeyError(f"unknown engine config keys {unknown}; known: {sorted(values)}")
    values.update(overrides)
    return values


def spec_from_node(node: Mapping[str, Any], where: str = "RECURRENT") -> EngineSpec:
    """Read and validate the engine keys of a config node (any mapping with the upper-case keys).

    Raises ``ValueError`` naming the config key (``f"{where}.{KEY}"``) for an invalid value and
    ``KeyError`` naming it for a missing key. Other keys of the node (the cell's) are ignored.
    """
    kwargs: Dict[str, Any] = {}
    renamed = {}
    for old, new in DEPRECATED_KEYS.items():
        if node.get(old, "") not in ("", None):
            warnings.warn(
                f"config key {where}.{old} is deprecated: use {where}.{new}; the old name will "
                "be removed in the next version",
                FutureWarning,
                stacklevel=2,
            )
            renamed[new] = node[old]
    for key, name in CONFIG_KEYS.items():
        if key not in node:
            raise KeyError(
                f"config node {where} has no key {key} (engine keys: {list(CONFIG_KEYS)})"
            )
        value = renamed.get(key, node[key])
        if key in _ZERO_IS_UNSET and _is_number(value) and value == 0:
            value = None
        elif key in _FLOAT_KEYS and _is_int(value):
            value = float(value)
        kwargs[name] = value
    try:
        spec = EngineSpec(**kwargs)
    except SpecError as err:
        key = next(k for k, f in CONFIG_KEYS.items() if f == err.field)
        raise ValueError(f"{where}.{key} = {err.value!r}: {err.why}") from None
    warn_step_counts(node, where)
    return spec


# Step counts above this are most likely a typo (the paper's largest: 300 steps of the hGRU).
SANE_MAX_STEPS = 10_000


# (config node name, key, value) already warned about in this process: a config is read
# several times (checked, then built), the warning is given once
_WARNED_STEP_COUNTS: set = set()


def warn_step_counts(node: Mapping[str, Any], where: str = "RECURRENT") -> None:
    """Warn (``UserWarning``, once per process and key) about step counts of ``node`` above
    :data:`SANE_MAX_STEPS`: valid, but each forward (or backward) pass then runs that many cell
    steps, so one iteration may take hours (the engine then prints progress lines:
    :class:`crbp_d2.recurrent.engine.StepProgress`)."""
    for key in ("TIMESTEPS", "TEST_TIMESTEPS", "TBPTT_STEPS", "NEUMANN_STEPS", "PHANTOM_STEPS"):
        value = node.get(key) if hasattr(node, "get") else None
        if _is_int(value) and value > SANE_MAX_STEPS:
            seen = (where, key, int(value))
            if seen in _WARNED_STEP_COUNTS:
                continue
            _WARNED_STEP_COUNTS.add(seen)
            warnings.warn(
                f"{where}.{key} = {value} is above {SANE_MAX_STEPS:,} (a typo?): each pass runs "
                f"{value:,} cell steps, one iteration may take hours (progress lines are "
                "printed on stderr)",
                UserWarning,
                stacklevel=3,
            )
