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


def ground_truth_outputs(record: dict, metadata) -> dict:
    """What a Detectron2 panoptic model would return for the dataset ``record`` if it predicted
    its ground truth exactly ("panoptic_seg", "sem_seg" logits, "instances" with score 1): every
    evaluator scores these at 100 by the definitions of PQ, AP and mIoU."""
    import json

    from crbp_d2.rfpn.data import read_panoptic_png

    import numpy as np
    import pycocotools.mask as mask_util
    from detectron2.structures import Boxes, BoxMode, Instances
    from PIL import Image

    height, width = record["height"], record["width"]
    panoptic = json.loads(open(metadata.panoptic_json).read())
    by_image = {a["image_id"]: a for a in panoptic["annotations"]}
    annotation = by_image[record["image_id"]]
    segment_ids = read_panoptic_png(f"{metadata.panoptic_root}/{annotation['file_name']}")
    segments_info = []
    for s in annotation["segments_info"]:
        isthing = s["category_id"] in metadata.thing_dataset_id_to_contiguous_id
        mapping = (
            metadata.thing_dataset_id_to_contiguous_id
            if isthing
            else metadata.stuff_dataset_id_to_contiguous_id
        )
        segments_info.append(
            {"id": s["id"], "category_id": mapping[s["category_id"]], "isthing": isthing}
        )

    semantic = np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64)
    logits = torch.zeros(len(metadata.stuff_classes), height, width)
    logits.scatter_(0, torch.as_tensor(np.where(semantic == 255, 0, semantic))[None], 1.0)

    objects = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    instances = Instances((height, width))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in objects]
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.ones(len(objects))
    instances.pred_classes = torch.tensor([a["category_id"] for a in objects], dtype=torch.int64)
    masks = [
        mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], height, width)))
        for a in objects
    ]
    instances.pred_masks = torch.as_tensor(np.stack(masks).astype(bool))
    return {
        "panoptic_seg": (torch.as_tensor(segment_ids.astype(np.int32)), segments_info),
        "sem_seg": logits,
        "instances": instances,
    }


def reference_baseline_scores(pairs, marker_radius: float, radii=(1, 2, 3), ink_threshold=0.2):
    """The Pathfinder baselines computed apart from crbp_d2 (numpy and scipy.ndimage only, no
    cv2): the marker is the argmax of the image averaged over a flat disk of ``marker_radius``;
    marker only = ink within ``marker_radius + 1`` px of it; flood fill k = ink 8-connected to
    the marker once dilated by a flat disk of radius k. pairs: (image (H, W) float, label (H, W)
    bool). Returns {"marker_only" | "flood_fill_k<r>": {"iou": pooled TP / (TP + FP + FN),
    "mean_iou": mean per-image IoU (1 when prediction and label are empty)}}."""
    import numpy as np
    from scipy import ndimage

    def disk(radius: float):
        r = int(np.floor(radius))
        dr, dc = np.mgrid[-r : r + 1, -r : r + 1]
        return dr**2 + dc**2 <= radius**2 + 1e-9

    names = ["marker_only"] + [f"flood_fill_k{r}" for r in radii]
    counts = {name: [] for name in names}
    for image, label in pairs:
        image, label = np.asarray(image, np.float64), np.asarray(label, bool)
        kernel = disk(max(marker_radius, 1.0)).astype(np.float64)
        response = ndimage.correlate(image, kernel / kernel.sum(), mode="constant")
        row, col = np.unravel_index(np.argmax(response), image.shape)
        ink = image > ink_threshold
        rr, cc = np.ogrid[: image.shape[0], : image.shape[1]]
        predictions = {
            "marker_only": ink & ((rr - row) ** 2 + (cc - col) ** 2 <= (marker_radius + 1) ** 2)
        }
        for r in radii:
            grown = ndimage.binary_dilation(ink, structure=disk(r)) if r > 0 else ink
            components, _ = ndimage.label(grown, structure=np.ones((3, 3), bool))
            keep = components == components[row, col] if components[row, col] else False
            predictions[f"flood_fill_k{r}"] = ink & keep
        for name, prediction in predictions.items():
            tp = int((prediction & label).sum())
            counts[name].append(
                (tp, int((prediction & ~label).sum()), int((~prediction & label).sum()))
            )
    scores = {}
    for name, rows in counts.items():
        tp, fp, fn = (np.array(column, np.float64) for column in zip(*rows))
        union = tp + fp + fn
        per_image = np.where(union > 0, tp / np.maximum(union, 1), 1.0)
        scores[name] = {"iou": tp.sum() / union.sum(), "mean_iou": float(per_image.mean())}
    return scores


def engine_grads(engine: nn.Module, x: torch.Tensor):
    """(flat gradient of the cell's parameters, engine output) for the loss mean(h^2) + LCP, the
    loss the engine speed/bf16 tests compare switches on."""
    engine.cell.zero_grad()
    out = engine(x)
    loss = out.state.square().mean() + (out.lcp if out.lcp is not None else 0)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in engine.cell.parameters()]), out
