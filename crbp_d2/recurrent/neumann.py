"""Recurrent back-propagation: the truncated Neumann series at the fixed point, as autograd.

For a fixed point h* = F(x, h*) and a loss gradient g0 = dL/dh*, the implicit-function gradient of
the parameters is (dF/dtheta)^T (I - J^T)^-1 g0 with J = dF/dh at h*. RBP approximates
(I - J^T)^-1 g0 by the partial sum g0 + J^T g0 + ... + (J^T)^K g0 (K vector-Jacobian products
through one stored step) and hands the result to autograd as the gradient of h_N = F(x, h_{N-1}),
which then flows into theta and x through that single step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .compiled import no_donated_buffers

logger = logging.getLogger(__name__)

NORM_CAPS = ("none", "pathfinder", "detectron2")


@dataclass
class NeumannStats:
    """Filled in by the backward pass: what the last Neumann series did."""

    terms_used: Optional[int] = None  # VJPs whose term was kept in the returned sum
    cap_fired: Optional[bool] = None
    term_norms: List[float] = field(default_factory=list)  # ||(J^T)^k g0||, k = 0..K


def neumann_series(
    vjp,
    g0: Sequence[Tensor],
    terms: int,
    norm_cap: str = "none",
    cap_threshold: float = 1.0,
    stats: Optional[NeumannStats] = None,
    tol: Optional[float] = None,
    cap_relative: bool = False,
) -> Tuple[Tensor, ...]:
    """Truncated Neumann sum of (I - J^T)^-1 g0 with up to ``terms`` vector-Jacobian products.

    The sum is accumulated in at least float32 (the VJPs run in the dtype of ``g0``, e.g. float16
    under autocast) and returned in the dtype of ``g0``.

    Args:
        vjp: maps a tuple v (shaped like g0) to the tuple J^T v.
        g0: the incoming gradient, a tuple of tensors (one per state part).
        terms: K >= 1, the number of VJPs (an upper bound with ``tol``).
        norm_cap: ``"none"``: the plain sum. ``"pathfinder"`` (the authors' Pathfinder code):
            stop at the first term where ||g + v|| > the bound, ||v|| grows or ||v|| < 1e-9,
            keeping the sum before that term. ``"detectron2"`` (the authors' Detectron2 code): the
            same test, but the series continues from the rejected v, skips every term that trips
            the test, and returns the sum saved at the last trip (or the full sum if none).
        cap_threshold: the cap's norm bound: absolute (1.0 in the authors' code), or
            ``cap_threshold * ||g0||`` with ``cap_relative`` (then scaling the loss, as a
            gradient scaler does, scales the result and changes no decision).
        tol: stop after the first term with ||(J^T)^k g0|| <= tol * ||g0|| (it is included).
    """
    if terms < 1:
        raise ValueError(f"the Neumann series needs at least 1 term, got {terms}")
    if norm_cap not in NORM_CAPS:
        raise ValueError(f"unknown norm_cap {norm_cap!r}; choose one of {NORM_CAPS}")
    if tol is not None and tol < 0:
        raise ValueError(f"the Neumann tolerance must be >= 0, got {tol}")
    v = tuple(g0)
    total = tuple(g.to(torch.promote_types(g.dtype, torch.float32)) for g in g0)
    g0_norm = _norm(v)
    bound = cap_threshold * g0_norm if cap_relative else cap_threshold
    last_norm = g0_norm
    saved_at_trip: Optional[Tuple[Tensor, ...]] = None
    kept, fired = 0, False
    norms = [last_norm]
    for _ in range(terms if g0_norm > 0 else 0):
        v_new = vjp(v)
        candidate = tuple(a + b.to(a.dtype) for a, b in zip(total, v_new))
        v_norm = _norm(v_new)
        norms.append(v_norm)
        tripped = norm_cap != "none" and (
            _norm(candidate) > bound
            or v_norm > last_norm
            or v_norm < 1e-9 * (g0_norm if cap_relative else 1.0)
        )
        if tripped:
            fired = True
            if norm_cap == "pathfinder":
                break
            saved_at_trip = total
        else:
            total = candidate
            kept += 1
        v, last_norm = v_new, v_norm
        if tol is not None and v_norm <= tol * g0_norm:
            break
    if saved_at_trip is not None:
        total = saved_at_trip
    if stats is not None:
        stats.terms_used, stats.cap_fired, stats.term_norms = kept, fired, norms
    return tuple(t.to(g.dtype) for t, g in zip(total, g0))


def _norm(parts: Sequence[Tensor]) -> float:
    return float(torch.sqrt(sum((p.double() ** 2).sum() for p in parts)))


class _NeumannRBP(torch.autograd.Function):
    """Identity in forward on the last state; the Neumann-corrected gradient in backward."""

    @staticmethod
    def forward(ctx, options: dict, recompute, n_parts: int, *tensors: Tensor):
        prev, last = tensors[:n_parts], tensors[n_parts:]
        ctx.options = options
        ctx.recompute = recompute
        ctx.save_for_backward(*prev, *last)
        ctx.n_parts = n_parts
        return tuple(t.view_as(t) for t in last)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor):
        saved = ctx.saved_tensors
        prev, last = saved[: ctx.n_parts], saved[ctx.n_parts :]
        options = ctx.options
        stored, recomputed = (prev, last), False
        if ctx.recompute is not None:  # J^T v through a recomputed (compiled) step
            with torch.enable_grad():
                leaves = tuple(p.detach().requires_grad_() for p in prev)
                prev, last = leaves, tuple(ctx.recompute(leaves))
                recomputed = True

        def vjp(v: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
            nonlocal prev, last, recomputed
            v = tuple(a.to(b.dtype) for a, b in zip(v, last))  # autograd wants matching dtypes
            try:
                with torch.enable_grad():
                    out = torch.autograd.grad(last, prev, v, retain_graph=True, allow_unused=True)
            except RuntimeError as err:
                if not recomputed:
                    raise
                logger.warning("Neumann VJPs: the recomputed step failed (%s); eager VJPs", err)
                (prev, last), recomputed = stored, False
                return vjp(v)
            return tuple(torch.zeros_like(p) if o is None else o for p, o in zip(prev, out))

        if ctx.recompute is None:
            corrected = neumann_series(vjp, grads, **options)
        else:  # the compiled backward is built at its first call: without donated buffers
            with no_donated_buffers():
                corrected = neumann_series(vjp, grads, **options)
        return (None, None, None) + (None,) * ctx.n_parts + tuple(corrected)


def rbp_attach(
    prev: Sequence[Tensor],
    last: Sequence[Tensor],
    terms: int,
    norm_cap: str = "none",
    cap_threshold: float = 1.0,
    stats: Optional[NeumannStats] = None,
    tol: Optional[float] = None,
    cap_relative: bool = False,
    recompute: Optional[Callable[[Sequence[Tensor]], Sequence[Tensor]]] = None,
) -> Tuple[Tensor, ...]:
    """Return ``last`` unchanged, with its gradient replaced by the RBP gradient in backward.

    Preconditions: each ``prev[i]`` is a detached leaf with ``requires_grad=True`` (the state
    h_{N-1} reached without a graph) and ``last = F(x, prev)`` was computed with autograd on, so
    the only graph stored is one step of F. See :func:`neumann_series` for the options.
    ``recompute(prev_parts) -> last_parts``, if given, is run once in backward (autograd on) and
    the VJPs go through its graph instead of the stored step's (a compiled step whose backward
    computes the state's gradient only); it must compute the same map.
    """
    if stats is None:
        stats = NeumannStats()
    options = {
        "terms": terms,
        "norm_cap": norm_cap,
        "cap_threshold": cap_threshold,
        "stats": stats,
        "tol": tol,
        "cap_relative": cap_relative,
    }
    return _NeumannRBP.apply(options, recompute, len(prev), *prev, *last)
