"""Figures of the Pathfinder analyses, each written to a PNG ``path`` (matplotlib, Agg)."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from scipy import stats

from crbp_d2.utils.report import pyplot


def plot_generalization(records: List[Dict[str, object]], path: str) -> None:
    """IoU vs test contour length, one line per model (records of ``generalization_matrix``)."""
    plt = pyplot()
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
    """IoU vs inference steps, one line per model ({model: rows of ``iou_over_steps``}), a
    dotted line at each model's training steps and a dashed one per baseline IoU."""
    plt = pyplot()
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
    plt = pyplot()
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


def timecourse_figure(
    image: np.ndarray,
    label: np.ndarray,
    course: Dict[str, object],
    max_panels: int = 12,
    title: str = "Pathfinder timecourse: the segmentation step by step",
):
    """The figure of :func:`plot_timecourse` (returned open, for checks of its layout): a grid
    of panels plus a narrow last column that holds the two colour bars, so that no colour bar
    or title lies over a panel."""
    plt = pyplot()
    prob = course["probability"]
    steps = prob.shape[0]
    shown = sorted(set(np.linspace(1, steps, min(max_panels, steps)).round().astype(int)))
    panels = len(shown) + 3
    columns = min(panels, 5)
    rows = -(-panels // columns)
    fig = plt.figure(figsize=(2.3 * columns + 1.0, 2.6 * rows + 0.5))
    grid = fig.add_gridspec(
        rows,
        columns + 1,
        width_ratios=[1] * columns + [0.07],
        wspace=0.3,
        hspace=0.5,
        left=0.02,
        right=0.92,
        top=1 - 0.55 / (2.6 * rows + 0.5),
        bottom=0.03,
    )
    axes = [fig.add_subplot(grid[i // columns, i % columns]) for i in range(panels)]
    for i in range(panels, rows * columns):
        fig.add_subplot(grid[i // columns, i % columns]).axis("off")
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("input image", fontsize=8)
    axes[1].imshow(label, cmap="gray")
    axes[1].set_title("target: marked contour", fontsize=8)
    probability = None
    for ax, t in zip(axes[2:], shown):
        probability = ax.imshow(prob[t - 1], cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"after step {t}: IoU {course['iou'][t - 1]:.2f}", fontsize=8)
    first = np.where(course["onset"] > 0, course["onset"], np.nan)
    onset = axes[-1].imshow(first, cmap="viridis", vmin=1, vmax=steps)
    axes[-1].set_title("step at which a pixel\nbecomes contour", fontsize=8)
    for ax in axes:
        ax.axis("off")
    if probability is not None:
        bar_rows = slice(0, max(rows - 1, 1))
        fig.colorbar(probability, cax=fig.add_subplot(grid[bar_rows, columns]), label="p(contour)")
    if rows > 1:
        fig.colorbar(onset, cax=fig.add_subplot(grid[rows - 1, columns]), label="step")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_timecourse(
    image: np.ndarray,
    label: np.ndarray,
    course: Dict[str, object],
    path: str,
    max_panels: int = 12,
    title: str = "Pathfinder timecourse: the segmentation step by step",
) -> None:
    """A grid: the (H, W) input image, its label, the predicted contour probability after up to
    ``max_panels`` steps (one colour bar for all) and the step at which each pixel first became
    contour (``course`` from :func:`~.analysis.timecourse`); laid out without overlaps."""
    fig = timecourse_figure(image, label, course, max_panels, title)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_training(diagnostics: Dict[str, dict], path: str) -> None:
    """Test IoU at N per epoch, one line per method: diagnostics {method: {"iou_per_epoch"}}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, d in diagnostics.items():
        ys = d["iou_per_epoch"]
        ax.plot(np.arange(1, len(ys) + 1), ys, "o-", label=method)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test IoU at N")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
