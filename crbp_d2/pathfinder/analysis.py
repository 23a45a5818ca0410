"""Analyses of trained Pathfinder models (paper Fig. 1 and the generalization / extrapolation
results). Each function returns plain records (lists of dicts) that the ``tools/pathfinder_*``
commands write as CSV/JSON next to a PNG.

- :func:`generalization_matrix`: models trained on one contour length, tested on 9/14/20/25.
- :func:`iou_over_steps`: IoU of the readout after t = 0..T steps (BPTT degrades after its N).
- :func:`state_space`: PCA of hidden-state trajectories, the per-image distance between the
  states at t = N and t = T, and two-sample KS tests between models (Fig. 1b/1c).
- :func:`timecourse`: the segmentation of one image step by step (Fig. 1a).

The authors' state-space code is not public: which tensor entered the PCA is unknown. Here each
state (B, C, H, W) is average-pooled to (C, P, P) (P = ``pool``, default 8) and flattened; the
PCA is fitted per model (as the per-model figures), and the distance is the authors' one: the
mean over the first ``components`` PCA dimensions of the squared difference (the paper's axis
says "L2"). The unprojected root-mean-square distance in the pooled space is reported too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode

from .config import config_from_dump
from .metrics import SegmentationMeter
from .models import RecurrentSegmenter, build_model, softmax_foreground
from .training_data import build_dataset

PAPER_LENGTHS = (9, 14, 20, 25)


# -- loading ---------------------------------------------------------------------------------


def load_trained(path: str, device: str = "cpu") -> Tuple[nn.Module, CfgNode]:
    """(model in eval mode, its config) from a trainer checkpoint (best.pth / last.pth)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=device, weights_only=False)
    if "config" not in state or "model" not in state:
        raise ValueError(f"{path} is not a Pathfinder trainer checkpoint (no config/model)")
    cfg = config_from_dump(state["config"], path)
    model = build_model(cfg).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg


def analysis_argument_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every multi-model analysis CLI shares: --checkpoints NAME=PATH ..., --out
    STEM, --batch-size, --device and --threads (call :func:`apply_threads` after parsing)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--checkpoints", nargs="+", required=True, help="NAME=PATH (trainer checkpoints)"
    )
    parser.add_argument("--out", required=True, help="output stem (no extension)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser


def apply_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def parse_named_paths(items: Sequence[str]) -> Dict[str, str]:
    """``["bptt=out/a/best.pth", ...]`` -> {"bptt": "out/a/best.pth"} (a bare path names itself)."""
    named: Dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = os.path.basename(os.path.dirname(item)) or item, item
        if name in named:
            raise ValueError(f"model name {name!r} given twice")
        named[name] = path
    return named


def make_test_loader(
    cfg: CfgNode, length: Optional[int] = None, size: Optional[int] = None, batch_size: int = 32
) -> DataLoader:
    """Test images of contour ``length`` (default the config's) as the config's data source."""
    dataset: Dataset = build_dataset(cfg, "test", length=length, size=size)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


# -- metrics ---------------------------------------------------------------------------------


@torch.no_grad()
def iou_over_steps(
    model: RecurrentSegmenter, loader: DataLoader, max_steps: int, device: str = "cpu"
) -> List[Dict[str, float]]:
    """Metrics of the readout after t = 0..max_steps steps: [{steps, iou, mean_image_iou, ...}]."""
    if not isinstance(model, RecurrentSegmenter):
        raise ValueError("IoU over steps needs a recurrent model (hgru or convlstm)")
    counts = list(range(max_steps + 1))
    meters = {t: SegmentationMeter() for t in counts}
    for image, label in loader:
        by_step = model.logits_at_steps(image.to(device), counts)
        for t in counts:
            meters[t].update(by_step[t], label.to(device))
    return [dict(meters[t].summary(), steps=float(t)) for t in counts]


@torch.no_grad()
def evaluate_at(
    model: nn.Module, loader: DataLoader, steps: Optional[int] = None, device: str = "cpu"
) -> Dict[str, float]:
    """Metrics of ``model`` on ``loader`` after ``steps`` steps (None: the model's own)."""
    meter = SegmentationMeter()
    for image, label in loader:
        image = image.to(device)
        if isinstance(model, RecurrentSegmenter):
            logits = model.logits_at_steps(image, [steps])[steps]
        else:
            logits = model(image).logits
        meter.update(logits, label.to(device))
    return meter.summary()


def generalization_matrix(
    checkpoints: Dict[str, str],
    lengths: Sequence[int] = PAPER_LENGTHS,
    test_size: Optional[int] = None,
    steps: Optional[int] = None,
    batch_size: int = 32,
    device: str = "cpu",
    data_overrides: Sequence[str] = (),
) -> List[Dict[str, float]]:
    """Each model (trained on its config's length) evaluated on every length in ``lengths``.

    ``data_overrides`` (KEY VALUE pairs, e.g. DATA.SOURCE on_the_fly) change the test data source.
    Returns records {model, method, train_length, test_length, train_steps, eval_steps, iou, ...}.
    """
    records = []
    for name, path in checkpoints.items():
        model, cfg = load_trained(path, device)
        if data_overrides:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.merge_from_list(list(data_overrides))
            cfg.freeze()
        n_eval = steps if steps is not None else _test_steps(model)
        for length in lengths:
            loader = make_test_loader(cfg, length, test_size, batch_size)
            summary = evaluate_at(model, loader, n_eval if _recurrent(model) else None, device)
            records.append(
                dict(
                    summary,
                    model=name,
                    arch=cfg.MODEL.ARCH,
                    method=cfg.MODEL.RECURRENT.METHOD,
                    train_length=cfg.DATA.TRAIN_LENGTH,
                    test_length=length,
                    train_steps=cfg.MODEL.RECURRENT.TIMESTEPS,
                    eval_steps=n_eval if _recurrent(model) else cfg.MODEL.RECURRENT.TIMESTEPS,
                )
            )
    return records


def _recurrent(model: nn.Module) -> bool:
    return isinstance(model, RecurrentSegmenter)


def _test_steps(model: nn.Module) -> Optional[int]:
    return model.engine.test_steps if _recurrent(model) else None


# -- state space -----------------------------------------------------------------------------


@torch.no_grad()
def hidden_trajectories(
    model: RecurrentSegmenter,
    loader: DataLoader,
    max_steps: int,
    pool: int = 8,
    images: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """Pooled hidden states of the first ``images`` test images: (images, max_steps, C * pool^2)
    for t = 1..max_steps."""
    rows: List[np.ndarray] = []
    seen = 0
    for image, _ in loader:
        out = model(image.to(device), steps=max_steps, record_states=True)
        assert out.states is not None
        pooled = [F.adaptive_avg_pool2d(h.float(), pool).flatten(1) for h in out.states]
        rows.append(torch.stack(pooled, dim=1).cpu().numpy())
        seen += image.shape[0]
        if seen >= images:
            break
    return np.concatenate(rows)[:images]


def pca_fit(data: np.ndarray, components: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (D,), basis (D, k), explained variance ratio (k,)) of rows of ``data`` (M, D)."""
    mean = data.mean(0)
    centred = data - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(components, vt.shape[0])
    variance = singular**2
    return mean, vt[:k].T, variance[:k] / variance.sum()


def state_space(
    trajectories: Dict[str, np.ndarray],
    train_steps: Dict[str, int],
    components: int = 2,
    compare_step: Optional[Dict[str, int]] = None,
) -> Dict[str, object]:
    """PCA, distances and KS tests for {model: (images, T, D) trajectories}.

    For each model: a PCA of all its states (t = 1..T), projections (images, T, k), the per-image
    distance d_i = mean_k (z_i(N) - z_i(T))^2 (N = ``compare_step`` or the training steps) and
    the RMS distance in the pooled state space. KS: scipy.stats.ks_2samp of the distances of
    every pair of models.
    """
    per_model: Dict[str, Dict[str, object]] = {}
    for name, traj in trajectories.items():
        images, steps, dim = traj.shape
        n = (compare_step or {}).get(name, train_steps[name])
        if not 1 <= n <= steps:
            raise ValueError(f"{name}: comparison step {n} outside 1..{steps}")
        mean, basis, explained = pca_fit(traj.reshape(-1, dim), components)
        projected = (traj.reshape(-1, dim) - mean) @ basis
        projected = projected.reshape(images, steps, -1)
        pca_distance = ((projected[:, n - 1] - projected[:, -1]) ** 2).mean(1)
        raw_distance = np.sqrt(((traj[:, n - 1] - traj[:, -1]) ** 2).mean(1))
        per_model[name] = {
            "projected": projected,
            "explained_variance": explained.tolist(),
            "compare_step": n,
            "final_step": steps,
            "pca_distance": pca_distance,
            "raw_distance": raw_distance,
        }
    ks = []
    names = list(per_model)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for key in ("pca_distance", "raw_distance"):
                result = stats.ks_2samp(per_model[a][key], per_model[b][key])
                ks.append(
                    {
                        "model_a": a,
                        "model_b": b,
                        "distance": key,
                        "statistic": float(result.statistic),
                        "p_value": float(result.pvalue),
                    }
                )
    return {"models": per_model, "ks": ks}


# -- timecourse ------------------------------------------------------------------------------


@torch.no_grad()
def timecourse(
    model: RecurrentSegmenter, image: Tensor, label: Tensor, max_steps: int, index: int = 0
) -> Dict[str, object]:
    """Contour probability of image ``index`` of a batch after every step t = 1..max_steps.

    The batch (B, 1, H, W) is run together because the hGRU's BatchNorm uses batch statistics.
    Returns {"probability": (T, H, W) array, "iou": [T floats], "colored": (H, W) sum over t of
    (prediction_t) * t (the authors' coloured timecourse)}.
    """
    by_step = model.logits_at_steps(image, list(range(1, max_steps + 1)))
    probs, ious = [], []
    for t in range(1, max_steps + 1):
        logits = by_step[t][index : index + 1]
        probs.append(softmax_foreground(logits)[0].cpu().numpy())
        meter = SegmentationMeter()
        meter.update(logits, label[index : index + 1])
        ious.append(meter.summary()["iou"])
    prob = np.stack(probs)
    colored = ((prob > 0.5) * np.arange(1, max_steps + 1)[:, None, None]).sum(0)
    return {"probability": prob, "iou": ious, "colored": colored}


# -- writing ---------------------------------------------------------------------------------


def write_records(records: List[Dict[str, object]], stem: str) -> Tuple[str, str]:
    """Write records as ``stem.csv`` and ``stem.json`` (atomically); returns both paths."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    fields: List[str] = []
    for record in records:
        fields += [k for k in record if k not in fields]
    tmp = f"{stem}.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(records)
    os.replace(tmp, f"{stem}.csv")
    tmp = f"{stem}.json.tmp"
    with open(tmp, "w") as f:
        json.dump(records, f, indent=2, default=_jsonable)
    os.replace(tmp, f"{stem}.json")
    return f"{stem}.csv", f"{stem}.json"


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value)} as JSON")


def plt_agg():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_generalization(records: List[Dict[str, object]], path: str) -> None:
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["model"] for r in records):
        rows = [r for r in records if r["model"] == name]
        ax.plot([r["test_length"] for r in rows], [r["iou"] for r in rows], "o-", label=name)
    ax.set_xlabel("test contour length")
    ax.set_ylabel("IoU (pooled)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Generalization across contour lengths")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_iou_over_steps(
    curves: Dict[str, List[Dict[str, float]]],
    train_steps: Dict[str, int],
    path: str,
    baselines: Optional[Dict[str, float]] = None,
) -> None:
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in curves.items():
        line = ax.plot([r["steps"] for r in rows], [r["iou"] for r in rows], label=name)[0]
        if name in train_steps:
            ax.axvline(train_steps[name], color=line.get_color(), ls=":", lw=1)
    for label, value in (baselines or {}).items():
        ax.axhline(value, color="gray", ls="--", lw=1)
        ax.text(0, value, f" {label}", va="bottom", fontsize=7, color="gray")
    ax.set_xlabel("inference steps t")
    ax.set_ylabel("IoU (pooled)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("IoU vs steps (dotted: training N)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_state_space(result: Dict[str, object], path: str) -> None:
    """Per model: hexbin of PC1/PC2, KDE contours before (red) / from (blue) step N, and one
    exemplar trajectory; last panel: histogram of the distances."""
    plt = plt_agg()
    models = result["models"]
    fig, axes = plt.subplots(1, len(models) + 1, figsize=(4 * (len(models) + 1), 3.8))
    for ax, (name, m) in zip(axes, models.items()):
        z = m["projected"]
        n = m["compare_step"]
        flat = z.reshape(-1, z.shape[-1])
        if flat.shape[1] < 2:
            flat = np.concatenate([flat, np.zeros_like(flat)], 1)
            z = np.concatenate([z, np.zeros_like(z)], -1)
        ax.hexbin(flat[:, 0], flat[:, 1], gridsize=30, cmap="Greys", mincnt=1)
        for part, cmap in ((z[:, :n], "Reds"), (z[:, n:], "Blues")):
            pts = part.reshape(-1, z.shape[-1])[:, :2]
            if pts.shape[0] > 5 and np.linalg.matrix_rank(np.cov(pts.T)) == 2:
                _kde_contour(ax, pts, cmap)
        ax.plot(z[0, :, 0], z[0, :, 1], "-", color="gold", lw=1.5)
        ax.set_title(f"{name}: red t<={n}, blue t>{n}", fontsize=9)
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
    ax = axes[-1]
    for name, m in models.items():
        ax.hist(np.log10(m["pca_distance"] + 1e-12), bins=20, alpha=0.5, label=name)
    ax.set_xlabel("log10 distance(h_N, h_T) in PCA space")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _kde_contour(ax, points: np.ndarray, cmap: str) -> None:
    kde = stats.gaussian_kde(points.T)
    lo, hi = points.min(0), points.max(0)
    xs, ys = np.meshgrid(np.linspace(lo[0], hi[0], 60), np.linspace(lo[1], hi[1], 60))
    density = kde(np.vstack([xs.ravel(), ys.ravel()])).reshape(xs.shape)
    ax.contour(xs, ys, density, levels=5, cmap=cmap, linewidths=1)


def plot_timecourse(
    image: np.ndarray, label: np.ndarray, course: Dict[str, object], path: str, max_panels: int = 12
) -> None:
    plt = plt_agg()
    prob = course["probability"]
    steps = prob.shape[0]
    shown = sorted(set(np.linspace(1, steps, min(max_panels, steps)).round().astype(int)))
    cols = len(shown) + 3
    fig, axes = plt.subplots(1, cols, figsize=(1.8 * cols, 2.2))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(label, cmap="gray")
    axes[1].set_title("label", fontsize=8)
    for ax, t in zip(axes[2:], shown):
        ax.imshow(prob[t - 1], cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"t={t} IoU {course['iou'][t - 1]:.2f}", fontsize=7)
    axes[-1].imshow(course["colored"], cmap="viridis")
    axes[-1].set_title("sum_t t*pred_t", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
