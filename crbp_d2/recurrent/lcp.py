"""The Lipschitz Coefficient Penalty (LCP) of C-BPTT / C-RBP."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

LCP_REDUCTIONS = ("mean", "sum")


def check_lcp_lambda(lcp_lambda: float) -> None:
    if not 0.0 <= lcp_lambda < 1.0:
        raise ValueError(f"lcp_lambda must be in [0, 1) for a contraction, got {lcp_lambda}")


def lipschitz_penalty(
    prev: Sequence[Tensor],
    last: Sequence[Tensor],
    lcp_lambda: float = 0.9,
    reduction: str = "mean",
    create_graph: bool = True,
    blockwise: bool = False,
) -> Tuple[Tensor, Tensor]:
    """LCP = reduce(relu(u - lambda)^2) with u = 1^T dF/dh, one vector-Jacobian product.

    u_j is the j-th column sum of the Jacobian J = d last / d prev (no absolute value, as in the
    paper). With ``create_graph=True`` the penalty is differentiable (through second derivatives
    of the cell), which is what C-BPTT and C-RBP train with.

    Args:
        prev: state parts h_{N-1}; each must be part of the graph of ``last`` (a leaf with
            ``requires_grad`` under RBP, an intermediate under BPTT).
        last: state parts h_N = F(x, h_{N-1}).
        blockwise: penalise each part against its own previous value only and add the per-part
            penalties (the authors' convLSTM); by default the joint Jacobian is used.

    Returns:
        (penalty, fraction): the reduced penalty (0-d, differentiable when ``create_graph``) and
        the detached fraction of entries of u above lambda.
    """
    check_lcp_lambda(lcp_lambda)
    if reduction not in LCP_REDUCTIONS:
        raise ValueError(f"unknown LCP reduction {reduction!r}; choose one of {LCP_REDUCTIONS}")
    if blockwise:
        groups = [([p], [q]) for p, q in zip(prev, last)]
    else:
        groups = [(list(prev), list(last))]
    penalty: Optional[Tensor] = None
    above, count = 0, 0
    for group_prev, group_last in groups:
        ones = [torch.ones_like(t) for t in group_last]
        columns = torch.autograd.grad(
            group_last,
            group_prev,
            ones,
            retain_graph=True,
            create_graph=create_graph,
            allow_unused=True,
        )
        columns = [torch.zeros_like(p) if u is None else u for p, u in zip(group_prev, columns)]
        hinge = [torch.relu(u - lcp_lambda) ** 2 for u in columns]
        total = sum(h.sum() for h in hinge)
        numel = sum(h.numel() for h in hinge)
        term = total / max(numel, 1) if reduction == "mean" else total  # 0 for an empty batch
        penalty = term if penalty is None else penalty + term
        above += sum(int((u.detach() > lcp_lambda).sum()) for u in columns)
        count += numel
    assert penalty is not None
    fraction = torch.tensor(above / max(count, 1))
    return penalty, fraction
