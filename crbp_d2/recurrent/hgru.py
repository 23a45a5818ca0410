"""hGRU cells: the Pathfinder form and the R-FPN mask-head form (GALA gate, GroupNorm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import RecurrentCell, chronos_bias_, get_nonlinearity, make_norm, softplus


class HGRUCell(RecurrentCell):
    """The Pathfinder hGRU (Linsley et al. 2018, as used for C-RBP Pathfinder).

    With sp = softplus, for drive x and state h, both (B, C, H, W)::

        g1 = sigmoid(U1 h + b1)
        c1 = N_a(W_inh * (h . g1))
        h1 = sp(x - sp(c1 . (alpha h + mu)))
        g2 = sigmoid(U2 h1 + b2)
        c2 = N_b(W_exc * h1)
        h~ = sp(kappa h1 + gamma c2 + omega h1 c2)
        h' = sp((1 - g2) h + g2 h~)

    Norms are shared across time (so the map is time-invariant, as RBP requires); alpha, mu,
    gamma, kappa, omega are per channel; kernels are orthogonal; b1 follows the chronos init
    (log U(1, T-1) with ``chronos_log=True``, the intent; ``False`` is the authors' code) and
    b2 = -b1.

    Args:
        channels: C, for both the drive and the state.
        kernel_size: spatial size of W_inh and W_exc (15 in the paper; 3/5/9 in the sweep).
        norm: norm inside the cell, see :func:`make_norm` ("BN" = batch statistics always).
        gate_timescale: T of the chronos init (the authors' Pathfinder code uses 8).
        inhibition_softplus / output_softplus: the inner softplus on the inhibition and the outer
            softplus on the new state (both in the authors' cell).
    """

    def __init__(
        self,
        channels: int = 25,
        kernel_size: int = 15,
        norm: str = "BN",
        norm_eps: float = 1e-3,
        norm_groups: int = 1,
        gate_timescale: float = 8.0,
        chronos_log: bool = True,
        inhibition_softplus: bool = True,
        output_softplus: bool = True,
    ) -> None:
        super().__init__()
        if channels < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                "HGRUCell needs channels >= 1 and an odd kernel_size, "
                f"got {channels}, {kernel_size}"
            )
        self.hidden_channels = channels
        self.padding = kernel_size // 2
        self.batch_independent = norm != "BN"  # BN uses the batch's statistics
        self.inhibition_softplus = inhibition_softplus
        self.output_softplus = output_softplus
        self.gate_inh = nn.Conv2d(channels, channels, 1)
        self.gate_exc = nn.Conv2d(channels, channels, 1)
        self.w_inh = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.w_exc = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.alpha = nn.Parameter(torch.full((channels, 1, 1), 0.1))
        self.mu = nn.Parameter(torch.full((channels, 1, 1), 1.0))
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), 1.0))
        self.kappa = nn.Parameter(torch.full((channels, 1, 1), 0.5))
        self.omega = nn.Parameter(torch.full((channels, 1, 1), 0.5))
        self.norm_inh = make_norm(norm, channels, eps=norm_eps, groups=norm_groups)
        self.norm_exc = make_norm(norm, channels, eps=norm_eps, groups=norm_groups)
        for weight in (self.w_inh, self.w_exc, self.gate_inh.weight, self.gate_exc.weight):
            nn.init.orthogonal_(weight)
        chronos_bias_(self.gate_inh.bias, gate_timescale, chronos_log)
        with torch.no_grad():
            self.gate_exc.bias.copy_(-self.gate_inh.bias)

    def forward(self, drive: Tensor, state: Tensor) -> Tensor:
        h = state
        g1 = torch.sigmoid(self.gate_inh(h))
        c1 = self.norm_inh(F.conv2d(h * g1, self.w_inh, padding=self.padding))
        inhibition = c1 * (self.alpha * h + self.mu)
        if self.inhibition_softplus:
            inhibition = softplus(inhibition)
        h1 = softplus(drive - inhibition)
        g2 = torch.sigmoid(self.gate_exc(h1))
        c2 = self.norm_exc(F.conv2d(h1, self.w_exc, padding=self.padding))
        candidate = softplus(self.kappa * h1 + self.gamma * c2 + self.omega * h1 * c2)
        new_h = (1 - g2) * h + g2 * candidate
        return softplus(new_h) if self.output_softplus else new_h


class MaskHeadHGRUCell(RecurrentCell):
    """The hGRU of the R-FPN mask head (3x3, 256 channels, GALA gate, GroupNorm in the cell).

    With nl the chosen nonlinearity, for drive x (the 14x14 RoI features) and state h::

        g1  = sigmoid(GALA(h))       GALA(h) = [U_c2 nl(U_c1 h + b_c1)] . [S_2 * nl(S_1 * h + b_s)]
                                               + b_comb   (per-pixel channel gate x spatial map)
        c0  = N_0(W_inh * (h . g1))
        inh = nl(x - c0 . (alpha h + mu))
        g2  = sigmoid(U h_inh + b)   with b = -b_comb
        c1  = N_1(W_exc * inh)
        h~  = nl(c1)                 (less_softplus=False: h~ = inh + nl(omega inh nl(c1)))
        h'  = (1 - g2) h + g2 h~

    Kernels use Kaiming-normal init, norm scales start at 0.1, b_comb follows the chronos init
    with T = ``timesteps``. Without GALA, g1 = sigmoid(U_0 h + b_0).

    ``authors_init=True`` reproduces two initialisations of the authors' mask-head code that
    differ from the defaults: the GALA channel bottleneck's bias b_c1 keeps PyTorch's default
    uniform init (std 0.036 at 256 channels; default: zero), and without GALA U (``gate_exc``)
    keeps PyTorch's default weight init (std 0.036; default: Kaiming normal, std 0.088).
    """

    def __init__(
        self,
        channels: int = 256,
        kernel_size: int = 3,
        timesteps: int = 20,
        gala: bool = True,
        norm: str = "GN",
        norm_groups: int = 32,
        nonlinearity: str = "softplus",
        less_softplus: bool = True,
        chronos_log: bool = True,
        gala_reduction: int = 4,
        authors_init: bool = False,
    ) -> None:
        super().__init__()
        if channels < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                "MaskHeadHGRUCell needs channels >= 1 and an odd kernel_size, "
                f"got {channels}, {kernel_size}"
            )
        self.hidden_channels = channels
        self.padding = kernel_size // 2
        self.batch_independent = norm != "BN"  # no batch statistics: RoIs can be padded
        self.gala = gala
        self.less_softplus = less_softplus
        self.nl = get_nonlinearity(nonlinearity)
        if gala:
            bottleneck = max(channels // gala_reduction, 1)
            spatial = max(channels // 2, 1)
            self.gala_channel_in = nn.Conv2d(channels, bottleneck, 1)
            self.gala_channel_out = nn.Conv2d(bottleneck, channels, 1, bias=False)
            self.gala_spatial_in = nn.Conv2d(channels, spatial, kernel_size, padding=self.padding)
            self.gala_spatial_out = nn.Conv2d(
                spatial, 1, kernel_size, padding=self.padding, bias=False
            )
            self.gala_bias = nn.Parameter(torch.empty(channels, 1, 1))
            nn.init.zeros_(self.gala_spatial_in.bias)
            if not authors_init:
                nn.init.zeros_(self.gala_channel_in.bias)
            kernels = [
                self.gala_channel_in.weight,
                self.gala_channel_out.weight,
                self.gala_spatial_in.weight,
                self.gala_spatial_out.weight,
            ]
            gate_bias = self.gala_bias
        else:
            self.gate_inh = nn.Conv2d(channels, channels, 1)
            nn.init.xavier_uniform_(self.gate_inh.weight)
            kernels = []
            gate_bias = self.gate_inh.bias
        self.gate_exc = nn.Conv2d(channels, channels, 1)
        self.w_inh = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.w_exc = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.alpha = nn.Parameter(torch.full((channels, 1, 1), 0.1))
        self.mu = nn.Parameter(torch.full((channels, 1, 1), 1.0))
        if not less_softplus:
            self.omega = nn.Parameter(torch.full((channels, 1, 1), 0.5))
        self.norm_inh = make_norm(norm, channels, groups=norm_groups)
        self.norm_exc = make_norm(norm, channels, groups=norm_groups)
        if gala or not authors_init:
            kernels.append(self.gate_exc.weight)
        for weight in kernels + [self.w_inh, self.w_exc]:
            nn.init.kaiming_normal_(weight)
        chronos_bias_(gate_bias, max(timesteps, 2), chronos_log)
        with torch.no_grad():
            self.gate_exc.bias.copy_(-gate_bias.reshape(-1))

    def inhibition_gate(self, h: Tensor) -> Tensor:
        if not self.gala:
            return torch.sigmoid(self.gate_inh(h))
        channel = self.gala_channel_out(self.nl(self.gala_channel_in(h)))
        spatial = self.gala_spatial_out(self.nl(self.gala_spatial_in(h)))
        return torch.sigmoid(channel * spatial + self.gala_bias)

    def forward(self, drive: Tensor, state: Tensor) -> Tensor:
        h = state
        c0 = self.norm_inh(F.conv2d(h * self.inhibition_gate(h), self.w_inh, padding=self.padding))
        inhibition = self.nl(drive - c0 * (self.alpha * h + self.mu))
        g2 = torch.sigmoid(self.gate_exc(inhibition))
        c1 = self.norm_exc(F.conv2d(inhibition, self.w_exc, padding=self.padding))
        if self.less_softplus:
            candidate = self.nl(c1)
        else:
            candidate = inhibition + self.nl(self.omega * inhibition * self.nl(c1))
        return (1 - g2) * h + g2 * candidate
