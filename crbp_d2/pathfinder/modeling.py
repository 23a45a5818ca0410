"""Pathfinder segmentation models: hGRU and convLSTM on the recurrent engine, two controls, and
the fixed filter bank of their input layer.

Every model maps a (B, 1, H, W) image in [0, 1] to (B, 2, H, W) logits (background, contour) and
returns a :class:`SegmenterOutput`, so the trainer and the analyses treat them alike.

- ``hgru``: Gabor/DoG 7x7 input conv, squared -> Pathfinder hGRU (25 ch, k x k) -> norm + 1x1 conv.
- ``convlstm``: the same input layer and readout around a convLSTM.
- ``cnn``: the authors' 6-layer CNN control (7x7 conv + BN, 6 x [k x k conv + BN + ReLU], 1x1 conv).
- ``ff_hgru``: the "feedforward hGRU" of the paper: the hGRU unrolled for N steps with untied
  weights (one cell per step), trained by plain back-propagation.

The input filter bank: the paper says "24 Gabors (12 orientations x 2 phases) and one
difference-of-Gaussians"; the authors' ``gabor_serre.npy`` holds the 24 Gabors and a uniform
positive disk instead of a DoG. Both are generated here (no file): ``center="dog" | "disk"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from crbp_d2.recurrent import (
    ConvLSTMCell,
    HGRUCell,
    RecurrenceDiagnostics,
    RecurrentEngine,
    cell_output,
    relative_residual,
    spec_from_node,
)

ARCHITECTURES = ("hgru", "convlstm", "cnn", "ff_hgru")
INPUT_INITS = ("gabor_dog", "gabor_disk", "random")
READOUT_NORMS = ("BN", "GN", "none", "")  # "none": off ("" accepted, as Detectron2 spells it)
READOUT_BIASES = ("zero", "authors", "prior")


# -- the input filter bank ---------------------------------------------------------------------

CENTER_FILTERS = ("dog", "disk")


def _grid(size: int) -> tuple[Tensor, Tensor]:
    half = (size - 1) / 2.0
    coords = torch.arange(size, dtype=torch.float64) - half
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return rows, cols


def _normalise(kernel: Tensor, aperture: Tensor) -> Tensor:
    """Zero mean inside the aperture, zero outside, unit L2 norm."""
    kernel = kernel * aperture
    kernel = kernel - aperture * kernel.sum() / aperture.sum()
    norm = kernel.norm()
    return kernel / norm if norm > 0 else kernel


def gabor_filter(
    size: int, theta: float, phase: str, wavelength: float = 3.5, sigma: float = 2.8
) -> Tensor:
    """One (size, size) Gabor in a disk aperture, zero-mean, unit L2 norm.

    ``theta`` is the orientation of the carrier's wave vector in radians; ``phase`` is ``"even"``
    (cosine) or ``"odd"`` (sine).
    """
    if phase not in ("even", "odd"):
        raise ValueError(f"Gabor phase must be 'even' or 'odd', got {phase!r}")
    rows, cols = _grid(size)
    radius = (size - 1) / 2.0
    aperture = ((rows**2 + cols**2) <= radius**2 + 1e-9).double()
    along = cols * math.cos(theta) + rows * math.sin(theta)
    envelope = torch.exp(-(rows**2 + cols**2) / (2 * sigma**2))
    carrier = torch.cos if phase == "even" else torch.sin
    return _normalise(envelope * carrier(2 * math.pi * along / wavelength), aperture).float()


def center_filter(
    size: int, kind: str = "dog", sigma_center: float = 1.0, sigma_surround: float = 2.0
) -> Tensor:
    """The 25th filter: a difference of Gaussians (paper) or the authors' uniform disk.

    The DoG is zero-mean with unit L2 norm inside the disk aperture; the disk is the authors'
    uniform positive disk whose entries sum to size**2 (radius (size-1)/2).
    """
    if kind not in CENTER_FILTERS:
        raise ValueError(f"unknown centre filter {kind!r}; choose one of {CENTER_FILTERS}")
    rows, cols = _grid(size)
    radius = (size - 1) / 2.0
    r2 = rows**2 + cols**2
    aperture = (r2 <= radius**2 + 1e-9).double()
    if kind == "disk":
        return (aperture * float(size**2) / aperture.sum()).float()
    center = torch.exp(-r2 / (2 * sigma_center**2)) / (2 * math.pi * sigma_center**2)
    surround = torch.exp(-r2 / (2 * sigma_surround**2)) / (2 * math.pi * sigma_surround**2)
    return _normalise(center - surround, aperture).float()


def gabor_bank(channels: int = 25, size: int = 7, center: str = "dog") -> Tensor:
    """(channels, 1, size, size) input filters: 2 x n orientations of Gabors + centre filter(s).

    With ``channels = 25`` this is the paper's bank: filters 0..11 even-phase and 12..23 odd-phase
    Gabors at 12 orientations in 15-degree steps, filter 24 the centre filter. Other channel
    counts use n = (channels - 1) // 2 orientations (180/n degrees apart); an even count adds the
    sign-inverted centre filter as the last channel.
    """
    if channels < 1:
        raise ValueError(f"the filter bank needs channels >= 1, got {channels}")
    if size < 3 or size % 2 == 0:
        raise ValueError(f"the filter bank needs an odd size >= 3, got {size}")
    orientations = (channels - 1) // 2
    filters = []
    for phase in ("even", "odd"):
        for k in range(orientations):
            filters.append(gabor_filter(size, math.pi * k / orientations, phase))
    filters.append(center_filter(size, center))
    if len(filters) < channels:
        filters.append(-center_filter(size, center))
    return torch.stack(filters[:channels]).unsqueeze(1)


# -- models ------------------------------------------------------------------------------------


@dataclass
class SegmenterOutput:
    """What a Pathfinder model returns.

    Attributes:
        logits: (B, 2, H, W) class scores.
        lcp: the Lipschitz penalty (0-d; differentiable under the LCP_METHODS), or None.
        diagnostics: the engine's diagnostics (Neumann fields filled after backward), or None for
            the feed-forward controls.
        states: detached hidden states h_1..h_N (B, C, H, W) when ``record_states`` was asked.
    """

    logits: Tensor
    lcp: Optional[Tensor] = None
    diagnostics: Optional[RecurrenceDiagnostics] = None
    states: Optional[List[Tensor]] = None


class InputLayer(nn.Module):
    """7x7 conv 1 -> C with a bias, initialised with the Gabor + centre bank, output squared.

    Args:
        init: ``gabor_dog`` (paper), ``gabor_disk`` (the authors' npy) or ``random``.
        square: square the output element-wise (the authors' code).
    Shapes: (B, 1, H, W) -> (B, C, H, W).
    """

    def __init__(
        self, channels: int = 25, kernel_size: int = 7, init: str = "gabor_dog", square: bool = True
    ) -> None:
        super().__init__()
        if init not in INPUT_INITS:
            raise ValueError(f"unknown input init {init!r}; choose one of {INPUT_INITS}")
        self.conv = nn.Conv2d(1, channels, kernel_size, padding=kernel_size // 2)
        self.square = square
        if init != "random":
            center = "dog" if init == "gabor_dog" else "disk"
            with torch.no_grad():
                self.conv.weight.copy_(gabor_bank(channels, kernel_size, center))

    def forward(self, image: Tensor) -> Tensor:
        out = self.conv(image)
        return out * out if self.square else out


class Readout(nn.Module):
    """Norm + 1x1 conv to 2 classes. (B, C, H, W) -> (B, 2, H, W).

    Args:
        norm: ``BN`` (batch statistics always, eps 1e-3, as the authors), ``GN`` or ``none``
            (``""`` accepted).
        bias_init: ``zero``; ``authors`` (both biases log(0.99/0.01): cancels in the softmax);
            ``prior`` (the intended prior: contour bias -log(99), i.e. p(contour) = 0.01 at init).
    """

    def __init__(self, channels: int = 25, norm: str = "BN", bias_init: str = "zero") -> None:
        super().__init__()
        if norm not in READOUT_NORMS:
            raise ValueError(f"unknown readout norm {norm!r}; choose one of {READOUT_NORMS}")
        if bias_init not in READOUT_BIASES:
            raise ValueError(f"unknown readout bias {bias_init!r}; choose one of {READOUT_BIASES}")
        if norm == "BN":
            self.norm: nn.Module = nn.BatchNorm2d(channels, eps=1e-3, track_running_stats=False)
        elif norm == "GN":
            self.norm = nn.GroupNorm(1, channels, eps=1e-3)
        else:
            self.norm = nn.Identity()
        self.conv = nn.Conv2d(channels, 2, 1)
        nn.init.xavier_normal_(self.conv.weight)
        with torch.no_grad():
            prior = math.log(0.99 / 0.01)
            if bias_init == "authors":
                self.conv.bias.fill_(prior)
            elif bias_init == "prior":
                self.conv.bias.copy_(torch.tensor([0.0, -prior]))
            else:
                self.conv.bias.zero_()

    def forward(self, hidden: Tensor) -> Tensor:
        return self.conv(self.norm(hidden))


class RecurrentSegmenter(nn.Module):
    """Input layer -> recurrent engine (any cell, any method) -> readout of h_N."""

    def __init__(self, input_layer: InputLayer, engine: RecurrentEngine, readout: Readout) -> None:
        super().__init__()
        self.input_layer = input_layer
        self.engine = engine
        self.readout = readout
        self.last_residual = float("nan")
        self.last_residuals: Dict[Optional[int], float] = {}

    @property
    def recurrent(self) -> bool:
        return True

    def forward(
        self, image: Tensor, steps: Optional[int] = None, record_states: bool = False
    ) -> SegmenterOutput:
        """(B, 1, H, W) image -> logits (B, 2, H, W) after ``steps`` steps (default: engine's)."""
        out = self.engine(self.input_layer(image), steps=steps, record_states=record_states)
        hidden = cell_output(self.engine.cell, out.state)
        states = None
        if out.states is not None:
            states = [cell_output(self.engine.cell, s) for s in out.states]
        return SegmenterOutput(self.readout(hidden), out.lcp, out.diagnostics, states)

    @torch.no_grad()
    def logits_at_steps(
        self, image: Tensor, steps: Sequence[Optional[int]]
    ) -> Dict[Optional[int], Tensor]:
        """Readouts after each step count in ``steps`` (0 = the zero state; None = test steps),
        from one run to the largest count: {count: (B, 2, H, W) logits}. Stores each count's own
        relative residual ||h_t - h_{t-1}|| / ||h_t|| in ``self.last_residuals`` (nan for 0) and
        that of the largest count in ``self.last_residual``."""
        wanted = {s: (self.engine.test_steps if s is None else int(s)) for s in steps}
        if any(n < 0 for n in wanted.values()):
            raise ValueError(f"step counts must be >= 0, got {list(steps)}")
        counts = set(wanted.values())
        last = max(counts)
        by_count: Dict[int, Tensor] = {}
        residual_at: Dict[int, float] = {}
        previous = None
        # iterate() runs at least one step; stopping at ``last`` never computes the one after it
        for t, state in enumerate(self.engine.iterate(self.input_layer(image), max(last, 1))):
            if t in counts:
                by_count[t] = self.readout(cell_output(self.engine.cell, state))
                residual_at[t] = (
                    relative_residual(state, previous) if previous is not None else float("nan")
                )
            if t == last:
                break
            previous = state
        self.last_residuals = {s: residual_at[n] for s, n in wanted.items()}
        self.last_residual = residual_at[last]
        return {s: by_count[n] for s, n in wanted.items()}

    @torch.no_grad()
    def logits_per_step(self, image: Tensor, steps: int) -> List[Tensor]:
        """Readout of the states h_0..h_steps: a list of ``steps + 1`` (B, 2, H, W) tensors."""
        by_count = self.logits_at_steps(image, list(range(steps + 1)))
        return [by_count[t] for t in range(steps + 1)]

    @torch.no_grad()
    def spectral_radius(self, image: Tensor, iterations: int = 30) -> float:
        """Power-iteration estimate of rho(dF/dh) at the state reached after ``test_steps``."""
        return self.engine.spectral_radius(self.input_layer(image), iterations=iterations)


class UnrolledHGRU(nn.Module):
    """The "feedforward hGRU": N hGRU cells with their own weights, applied once each."""

    def __init__(self, input_layer: InputLayer, cells: List[HGRUCell], readout: Readout) -> None:
        super().__init__()
        self.input_layer = input_layer
        self.cells = nn.ModuleList(cells)
        self.readout = readout

    @property
    def recurrent(self) -> bool:
        return False

    def forward(
        self, image: Tensor, steps: Optional[int] = None, record_states: bool = False
    ) -> SegmenterOutput:
        if steps is not None and steps != len(self.cells):
            raise ValueError(
                f"the feedforward hGRU has exactly {len(self.cells)} layers; "
                f"cannot run {steps} steps"
            )
        drive = self.input_layer(image)
        h = drive.new_zeros((drive.shape[0], self.cells[0].hidden_channels) + drive.shape[2:])
        states: List[Tensor] = []
        previous = h
        for cell in self.cells:
            previous, h = h, cell(drive, h)
            if record_states:
                states.append(h.detach())
        diag = RecurrenceDiagnostics("bptt", len(self.cells), relative_residual(h, previous))
        return SegmenterOutput(self.readout(h), None, diag, states if record_states else None)


class FeedforwardCNN(nn.Module):
    """The authors' CNN control: 7x7 conv (no bias) + BN, ``layers`` x [k x k conv + BN + ReLU],
    1x1 conv to 2 classes. Its BN uses running statistics (unlike the hGRU's)."""

    def __init__(self, channels: int = 25, kernel_size: int = 15, layers: int = 6) -> None:
        super().__init__()
        blocks: List[nn.Module] = [
            nn.Conv2d(1, channels, 7, padding=3, bias=False),
            nn.BatchNorm2d(channels),
        ]
        for _ in range(layers):
            blocks += [
                nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv2d(channels, 2, 1)

    @property
    def recurrent(self) -> bool:
        return False

    def forward(
        self, image: Tensor, steps: Optional[int] = None, record_states: bool = False
    ) -> SegmenterOutput:
        if steps is not None:
            raise ValueError("the CNN control has no recurrent steps to change")
        return SegmenterOutput(self.head(self.body(image)))


def build_model(cfg) -> nn.Module:
    """Build the Pathfinder model described by a config (see :mod:`crbp_d2.pathfinder.config`)."""
    m = cfg.MODEL
    node = m.RECURRENT  # the engine's keys and the cell's, as in the Detectron2 head's node
    spec = spec_from_node(node, "MODEL.RECURRENT")
    if node.CELL not in ARCHITECTURES:
        raise ValueError(
            f"unknown MODEL.RECURRENT.CELL {node.CELL!r}; choose one of {ARCHITECTURES}"
        )
    if node.CELL == "cnn":
        return FeedforwardCNN(m.CHANNELS, node.KERNEL_SIZE, m.CNN_LAYERS)
    input_layer = InputLayer(m.CHANNELS, m.INPUT_KERNEL, m.INPUT_INIT, m.INPUT_SQUARE)
    readout = Readout(m.CHANNELS, m.READOUT_NORM, m.READOUT_BIAS)

    def hgru_cell() -> HGRUCell:
        return HGRUCell(
            channels=m.CHANNELS,
            kernel_size=node.KERNEL_SIZE,
            norm=node.CELL_NORM,
            norm_eps=1e-3,
            norm_groups=node.CELL_NORM_GROUPS,
            gate_timescale=node.GATE_TIMESCALE if node.GATE_TIMESCALE > 0 else float(spec.steps),
            chronos_log=node.CHRONOS_LOG,
            inhibition_softplus=node.INHIBITION_SOFTPLUS,
            output_softplus=node.OUTPUT_SOFTPLUS,
        )

    if node.CELL == "ff_hgru":
        if spec.method != "bptt":
            raise ValueError(
                "the feedforward hGRU has no recurrence; MODEL.RECURRENT.METHOD must be 'bptt', "
                f"got {spec.method!r}"
            )
        return UnrolledHGRU(input_layer, [hgru_cell() for _ in range(spec.steps)], readout)
    if node.CELL == "hgru":
        cell: nn.Module = hgru_cell()
    else:
        cell = ConvLSTMCell(m.CHANNELS, m.CHANNELS, node.KERNEL_SIZE, node.LSTM_IMPLICIT_STATE)
    engine = RecurrentEngine.from_spec(cell, spec)
    return RecurrentSegmenter(input_layer, engine, readout)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def softmax_foreground(logits: Tensor) -> Tensor:
    """(B, 2, H, W) logits -> (B, H, W) probability of the contour class."""
    return F.softmax(logits.float(), dim=1)[:, 1]
