"""Convolutional LSTM cell (no peepholes) whose state is the pair (h, c)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from .base import RecurrentCell


class ConvLSTMCell(RecurrentCell):
    """ConvLSTM: i, f, o = sigmoid(W_x* x + W_h* h), c' = f c + i tanh(W_xc* x + W_hc* h),
    h' = o tanh(c').

    The input convolutions (with bias) depend only on the drive, so :meth:`prepare` computes them
    once per input instead of once per step; the hidden convolutions have no bias.

    Args:
        input_channels / hidden_channels: channels of the drive x and of h and c.
        kernel_size: size of all convolutions (15 in the authors' Pathfinder model).
        implicit_state: ``"joint"`` (default, correct): RBP and LCP treat (h, c) as the state.
            ``"h_only"`` reproduces the authors' code: the Neumann series runs on dh'/dh only
            (c gets no implicit correction) and the LCP is the sum of separate penalties on
            dh'/dh and dc'/dc.
    """

    def __init__(
        self,
        input_channels: int = 25,
        hidden_channels: int = 25,
        kernel_size: int = 15,
        implicit_state: str = "joint",
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"ConvLSTMCell needs an odd kernel_size, got {kernel_size}")
        if implicit_state not in ("joint", "h_only"):
            raise ValueError(f"implicit_state must be 'joint' or 'h_only', got {implicit_state!r}")
        self.hidden_channels = hidden_channels
        padding = kernel_size // 2
        self.input_conv = nn.Conv2d(
            input_channels, 4 * hidden_channels, kernel_size, padding=padding
        )
        self.hidden_conv = nn.Conv2d(
            hidden_channels, 4 * hidden_channels, kernel_size, padding=padding, bias=False
        )
        if implicit_state == "h_only":
            self.implicit_components = (0,)
            self.lcp_blockwise = True

    def prepare(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, 4 C_hidden, H, W) input pre-activations of the four gates."""
        return self.input_conv(x)

    def init_state(self, drive: Tensor) -> Tuple[Tensor, Tensor]:
        b, _, height, width = drive.shape
        zeros = drive.new_zeros((b, self.hidden_channels, height, width))
        return zeros, zeros.clone()

    def forward(self, drive: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        h, c = state
        i, f, g, o = torch.chunk(drive + self.hidden_conv(h), 4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        return h_new, c_new
