"""Helpers shared by several test modules (tests/ is on sys.path: ``from helpers import ...``).

The recurrent core: small float64 cells and exact references (dense Jacobians). The Detectron2
front-end (imported inside the functions, so this module needs no Detectron2): training
instances for a mask head and a loss term made NaN from an iteration on.
"""

import torch
import torch.utils.data
from torch import nn

from crbp_d2.recurrent import ConvLSTMCell, HGRUCell, MaskHeadHGRUCell, RecurrentCell
from crbp_d2.recurrent.base import state_parts

DTYPE = torch.float64


class LinearCell(RecurrentCell):
    """F(x, h) = A h + B x on flattened (B, n, 1, 1) states: the exact gradients are known."""

    def __init__(self, n: int, spectral_radius: float = 0.7) -> None:
        super().__init__()
        self.hidden_channels = n
        a = torch.randn(n, n, dtype=DTYPE)
        a = a * (spectral_radius / torch.linalg.eigvals(a).abs().max())
        self.a = nn.Parameter(a)
        self.b = nn.Parameter(torch.randn(n, n, dtype=DTYPE) / n**0.5)

    def forward(self, drive, state):
        h, x = state[..., 0, 0], drive[..., 0, 0]
        return (h @ self.a.T + x @ self.b.T)[..., None, None]


def _contractive_d2_cell() -> MaskHeadHGRUCell:
    cell = MaskHeadHGRUCell(channels=4, kernel_size=3, timesteps=6, norm_groups=2).to(DTYPE)
    with (
        torch.no_grad()
    ):  # open the update gate so the fixed point is reached in a few hundred steps
        cell.gate_exc.bias.fill_(2.0)
    return cell


CELLS = {
    "hgru": lambda: HGRUCell(channels=3, kernel_size=3).to(DTYPE),
    "hgru_gn": lambda: HGRUCell(channels=3, kernel_size=3, norm="GN").to(DTYPE),
    "hgru_d2": _contractive_d2_cell,
    "convlstm": lambda: ConvLSTMCell(3, 3, kernel_size=3).to(DTYPE),
}


def _input_for(cell: RecurrentCell) -> torch.Tensor:
    channels = cell.hidden_channels if not isinstance(cell, ConvLSTMCell) else 3
    return torch.rand(2, channels, 5, 5, dtype=DTYPE)


def _flat(parts):
    return torch.cat([p.reshape(-1) for p in parts])


def _unflat(vector, like):
    out, i = [], 0
    for p in like:
        out.append(vector[i : i + p.numel()].view_as(p))
        i += p.numel()
    return tuple(out)


def _dense_jacobian(cell, drive, state):
    """J[i, j] = d F(state)_i / d state_j over all parts, flattened."""
    parts = state_parts(state)

    def step(flat):
        new = cell(
            drive,
            type(state)(_unflat(flat, parts)) if isinstance(state, tuple) else flat.view_as(state),
        )
        return _flat(state_parts(new))

    return torch.autograd.functional.jacobian(step, _flat(parts))


def _param_grads_from_vector(cell, drive_fn, x, state, vector):
    """(dF/dtheta)^T v and (dF/dx)^T v at ``state`` for a flattened adjoint ``vector``."""
    x = x.detach().requires_grad_()
    new = state_parts(cell(drive_fn(x), state))
    params = [p for p in cell.parameters()]
    grads = torch.autograd.grad(new, params + [x], _unflat(vector, new), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params + [x], grads)]


def _rel_err(got, want):
    got, want = torch.cat([g.reshape(-1) for g in got]), torch.cat([w.reshape(-1) for w in want])
    return float((got - want).norm() / want.norm())


def training_instances(counts=(3, 2), size=64, classes=3, dtype=torch.float32, generator=None):
    """Per-image proposals for a Detectron2 mask head: gt boxes (``dtype``), classes and square
    bit masks, drawn from ``generator`` (default: a new one seeded with 1)."""
    from detectron2.structures import BitMasks, Boxes, Instances

    generator = generator if generator is not None else torch.Generator().manual_seed(1)
    images = []
    for n in counts:
        inst = Instances((size, size))
        xy = torch.randint(0, size // 2, (n, 2), generator=generator).to(dtype)
        wh = torch.randint(8, size // 2, (n, 2), generator=generator).to(dtype)
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(n, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0 : (y0 + y1) // 2 + 1, x0:x1] = True
        inst.proposal_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, classes, (n,), generator=generator)
        inst.gt_masks = BitMasks(masks)
        images.append(inst)
    return images


def _nan_from_iteration(monkeypatch, term: str, first: int) -> None:
    """Make the mask head's ``term`` NaN from iteration ``first`` on."""
    from crbp_d2.rfpn.modeling import RecurrentMaskHead

    from detectron2.utils.events import get_event_storage

    original = RecurrentMaskHead._forward_train

    def forward_train(self, x, instances):
        losses = original(self, x, instances)
        if get_event_storage().iter >= first:
            losses[term] = losses[term] * float("nan")
        return losses

    monkeypatch.setattr(RecurrentMaskHead, "_forward_train", forward_train)


def _exact_implicit_gradient(cell, prepare, x, weights, steps=600):
    """The implicit-function-theorem gradient of sum(weights * h*) for the cell's parameters and
    ``x``, from a dense Jacobian at the fixed point h* (reached by iterating the cell by hand):
    (dF/dtheta)^T (I - J^T)^-1 w. Independent of the engine's backward code."""
    drive = prepare(x).detach()
    with torch.no_grad():
        state = cell.init_state(drive) if hasattr(cell, "init_state") else torch.zeros_like(drive)
        for _ in range(steps):
            previous, state = state, cell(drive, state)
    assert (_flat(state_parts(state)) - _flat(state_parts(previous))).norm() < 1e-12
    jac = _dense_jacobian(cell, drive, state)
    assert torch.linalg.eigvals(jac).abs().max() < 1.0
    adjoint = torch.linalg.solve(torch.eye(jac.shape[0], dtype=DTYPE) - jac.T, _flat(weights))
    return _param_grads_from_vector(cell, prepare, x, state, adjoint)


# -- the Pathfinder trainer ----------------------------------------------------------------


class LineDataset(torch.utils.data.Dataset):
    """Deterministic toy segmentation: a bright marker and a line; label = the line + marker."""

    def __init__(self, num=16, size=16, seed=0, nan_index=None):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(num):
            image = torch.rand(1, size, size, generator=g) * 0.1
            label = torch.zeros(size, size, dtype=torch.long)
            row = int(torch.randint(2, size - 2, (1,), generator=g))
            image[0, row, 2:-2] = 1.0
            label[row, 2:-2] = 1
            if i == nan_index:
                image[0, 0, 0] = float("nan")
            self.items.append((image, label))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def tiny_cfg(tmp_path, *overrides):
    """A Pathfinder config for a 4-channel hGRU, 3 steps, 2 epochs, written under ``tmp_path``."""
    from crbp_d2.pathfinder.config import load_config

    base = [
        "OUTPUT_DIR",
        str(tmp_path / "run"),
        "MODEL.CHANNELS",
        4,
        "MODEL.RECURRENT.KERNEL_SIZE",
        3,
        "MODEL.RECURRENT.TIMESTEPS",
        3,
        "SOLVER.BATCH_SIZE",
        4,
        "SOLVER.EPOCHS",
        2,
        "SOLVER.LOG_PERIOD",
        1,
        "TEST.BATCH_SIZE",
        8,
        "TEST.SPECTRAL_RADIUS_ITERS",
        4,
        "TEST.EXTRA_STEPS",
        "[6]",
    ]
    return load_config(overrides=base + list(overrides))


# -- metrics ---------------------------------------------------------------------------------
