"""The cell protocol shared by every recurrent cell, and helpers for (possibly tuple) states."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

State = Union[Tensor, Tuple[Tensor, ...]]


# Above this, softplus(x) is x (F.softplus's default threshold).
_SOFTPLUS_THRESHOLD = 20


class _CPUSoftplus(torch.autograd.Function):
    """softplus with F.softplus's autograd footprint: saves its input only, and its backward
    (differentiated by the LCP) saves the incoming gradient and the input, as torch's does."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        # The clamp keeps exp finite in the branch that is not taken.
        return torch.where(
            x > _SOFTPLUS_THRESHOLD,
            x,
            torch.log(torch.exp(x.clamp_max(_SOFTPLUS_THRESHOLD + 10)) + 1),
        )

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return _CPUSoftplusBackward.apply(grad, x)


class _CPUSoftplusBackward(torch.autograd.Function):
    """grad * softplus'(x) = grad * sigmoid(x) (1 above 20), differentiable once more."""

    @staticmethod
    def forward(ctx, grad: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(grad, x)
        return torch.where(x > _SOFTPLUS_THRESHOLD, grad, grad * torch.sigmoid(x))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, outer: Tensor):
        grad, x = ctx.saved_tensors
        above = x > _SOFTPLUS_THRESHOLD
        sigmoid = torch.sigmoid(x)
        d_grad = torch.where(above, outer, outer * sigmoid)
        d_x = torch.where(above, torch.zeros_like(x), outer * grad * sigmoid * (1 - sigmoid))
        return d_grad, d_x


def softplus(x: Tensor) -> Tensor:
    """``F.softplus(x)`` (beta 1, threshold 20), any shape; on CPU computed as
    ``log(1 + exp(x))``.

    PyTorch's CPU softplus goes through ``log1p``, which is not vectorised on some AVX-512 CPUs
    (~2 ms for a 16x64x14x14 RoI batch on 1 thread, 4x this expression); the cells call it several
    times per step. Same function to float rounding (in float32 within 6e-7 of the float64 value,
    as ``F.softplus``; below ``x = -17`` it gives 0 instead of ``exp(x)``), same gradient
    (``sigmoid(x)``, 1 above 20), twice differentiable (the LCP differentiates through it), and
    like ``F.softplus`` it saves only its input for backward. Other devices use ``F.softplus``.

    >>> x = torch.linspace(-30, 30, 101, dtype=torch.float64)
    >>> bool(torch.allclose(softplus(x), nn.functional.softplus(x), rtol=1e-15, atol=1e-15))
    True
    """
    if x.device.type != "cpu":
        return nn.functional.softplus(x)
    if x.dtype in (torch.float16, torch.bfloat16):  # exp overflows float16 above 11
        return _CPUSoftplus.apply(x.float()).to(x.dtype)
    return _CPUSoftplus.apply(x)


NONLINEARITIES: dict[str, Callable[[Tensor], Tensor]] = {
    "softplus": softplus,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
}


def state_parts(state: State) -> Tuple[Tensor, ...]:
    """A state as a tuple of tensors (a plain tensor becomes a 1-tuple)."""
    return state if isinstance(state, tuple) else (state,)


def state_like(parts: Sequence[Tensor], template: State) -> State:
    """Rebuild a state with the structure of ``template`` from its parts."""
    return tuple(parts) if isinstance(template, tuple) else parts[0]


def state_norm(parts: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of the concatenation of all parts (a 0-d tensor)."""
    return torch.sqrt(sum((p.detach().double() ** 2).sum() for p in parts))


def get_nonlinearity(name: str) -> Callable[[Tensor], Tensor]:
    if name not in NONLINEARITIES:
        raise ValueError(f"unknown nonlinearity {name!r}; choose one of {sorted(NONLINEARITIES)}")
    return NONLINEARITIES[name]


def make_norm(
    kind: str, channels: int, *, eps: float = 1e-5, groups: int = 32, weight_init: float = 0.1
) -> nn.Module:
    """A normalisation layer usable *inside* a recurrent cell (it is double-differentiated by LCP).

    Args:
        kind: "BN" (batch statistics at train and test time, no running stats, as in the authors'
            Pathfinder cell), "GN" (GroupNorm with ``groups`` groups), "IN" (instance norm, affine)
            or "" / "none" (identity).
        channels: number of channels C of the (B, C, H, W) input.
        weight_init: initial scale (the authors use 0.1 for every norm inside the cell).
    """
    if kind in ("", "none"):
        return nn.Identity()
    if kind in ("SyncBN", "NaiveSyncBN", "FrozenBN"):
        raise ValueError(
            f"norm {kind!r} cannot be used inside a recurrent cell: SyncBatchNorm has no double "
            "backward (needed by LCP) and frozen statistics are not a per-step norm; "
            "use 'GN' or 'BN'"
        )
    if kind == "BN":
        layer: nn.Module = nn.BatchNorm2d(channels, eps=eps, track_running_stats=False)
    elif kind == "GN":
        if channels % groups != 0:
            raise ValueError(
                f"GroupNorm: channels ({channels}) must be divisible by groups ({groups})"
            )
        layer = nn.GroupNorm(groups, channels, eps=eps)
    elif kind == "IN":
        layer = nn.GroupNorm(channels, channels, eps=eps)
    else:
        raise ValueError(f"unknown cell norm {kind!r}; choose one of 'BN', 'GN', 'IN', ''")
    nn.init.constant_(layer.weight, weight_init)
    nn.init.zeros_(layer.bias)
    return layer


def chronos_bias_(bias: Tensor, timescale: float, apply_log: bool) -> Tensor:
    """Fill ``bias`` in place with the chronos gate-bias init, U(1, T-1) or its log.

    The authors' code calls ``.log()`` out of place, so the log never happens; ``apply_log=False``
    reproduces that (update gates start almost closed). T <= 2 gives a constant 1 (or 0 with log).
    """
    high = max(float(timescale) - 1.0, 1.0)
    with torch.no_grad():
        bias.uniform_(1.0, high)
        if apply_log:
            bias.log_()
    return bias


# -- the cell contract ------------------------------------------------------------------------
# The engine needs only ``cell(drive, state) -> state``. Everything else it asks of a cell has a
# default, used when the cell does not define it (a plain ``nn.Module`` works):


def cell_prepare(cell: nn.Module, x: Tensor) -> Tensor:
    """``cell.prepare(x)`` (work done once per input), or ``x`` itself."""
    prepare = getattr(cell, "prepare", None)
    return x if prepare is None else prepare(x)


def cell_init_state(cell: nn.Module, drive: Tensor) -> State:
    """``cell.init_state(drive)``; else zeros of shape (B, ``cell.hidden_channels``, *spatial)
    when the cell has ``hidden_channels``; else zeros shaped like the drive."""
    init_state = getattr(cell, "init_state", None)
    if init_state is not None:
        return init_state(drive)
    channels = getattr(cell, "hidden_channels", None)
    if channels is None:
        return torch.zeros_like(drive)
    return drive.new_zeros((drive.shape[0], int(channels)) + tuple(drive.shape[2:]))


def cell_output(cell: nn.Module, state: State) -> Tensor:
    """``cell.output(state)`` (what a readout sees), or the state's first part."""
    output = getattr(cell, "output", None)
    return state_parts(state)[0] if output is None else output(state)


class RecurrentCell(nn.Module):
    """A module mapping (drive, state) to the next state, with time-invariant parameters.

    Subclasses implement :meth:`forward`. The engine calls :meth:`prepare` once per input (work
    that depends only on the input, e.g. the convLSTM's input convolutions), :meth:`init_state`
    for h0 = 0 and :meth:`output` to read the tensor a readout consumes.

    Attributes:
        implicit_components: indices of the state parts the implicit (RBP) gradient and the LCP
            treat as the state; ``None`` means all parts jointly (the correct choice).
        lcp_blockwise: compute the LCP per part against its own previous value only (the
            authors' convLSTM), instead of on the joint Jacobian.
    """

    implicit_components: Optional[Tuple[int, ...]] = None
    lcp_blockwise: bool = False
    hidden_channels: int

    def prepare(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) input -> the drive passed to every step. Identity by default."""
        return x

    def init_state(self, drive: Tensor) -> State:
        """Zero state for a (B, *, H, W) drive: (B, hidden_channels, H, W)."""
        b, _, h, w = drive.shape
        return drive.new_zeros((b, self.hidden_channels, h, w))

    def output(self, state: State) -> Tensor:
        """The (B, hidden_channels, H, W) tensor a readout sees (the hidden state h)."""
        return state_parts(state)[0]

    def forward(self, drive: Tensor, state: State) -> State:  # pragma: no cover - abstract
        raise NotImplementedError
