"""Analyses of trained Pathfinder models (paper Fig. 1 and the generalization / extrapolation
results). Each function returns plain records (lists of dicts) or arrays; :mod:`.reports` runs
them for the ``pathfinder_*`` commands and writes CSV/JSON next to a PNG (:mod:`.plots`).

- :func:`load_trained`, :func:`make_test_loader`: a trained model and its test images.
- :func:`generalization_matrix`: models trained on one contour length, tested on 9/14/20/25.
- :func:`hidden_trajectories`, :func:`state_space`: PCA of hidden-state trajectories, the
  per-image distance between the states at t = N and t = T, and two-sample KS tests between
  models (Fig. 1b/1c).
- :func:`timecourse`: the segmentation of one image step by step (Fig. 1a).
- IoU over steps t = 0..T is :func:`.evaluator.iou_over_steps`.

The authors' state-space code is not public: which tensor entered the PCA is unknown. Here each
state (B, C, H, W) is average-pooled to (C, P, P) (P = ``pool``, default 8) and flattened; the
PCA is fitted per model (as the per-model figures), and the distance is the authors' one: the
mean over the first ``components`` PCA dimensions of the squared difference (the paper's axis
says "L2"). The unprojected root-mean-square distance in the pooled space is reported too.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode

from crbp_d2.utils.safe_load import load_torch_file

from ..config import config_from_dump
from ..data.datasets import build_dataset
from ..modeling import RecurrentSegmenter, build_model, softmax_foreground
from .evaluator import evaluate_at
from .metrics import SegmentationMeter

PAPER_LENGTHS = (9, 14, 20, 25)


# -- loading ---------------------------------------------------------------------------------


def load_trained(path: str, device: str = "cpu") -> Tuple[nn.Module, CfgNode]:
    """(model in eval mode, its config) from a trainer checkpoint (best.pth / last.pth)."""
    state = load_torch_file(path, map_location=device)  # data only, never code
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"{path} is not a Pathfinder trainer checkpoint (no config/model)")
    cfg = config_from_dump(state["config"], path)
    model = build_model(cfg).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # names and shapes that do not fit the config in the file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"checkpoint {path}: its weights do not fit its own config ({first})")
    model.eval()
    return model, cfg


def make_test_loader(
    cfg: CfgNode, length: Optional[int] = None, size: Optional[int] = None, batch_size: int = 32
) -> DataLoader:
    """Test images of contour ``length`` (default the config's) as the config's data source."""
    dataset: Dataset = build_dataset(cfg, "test", length=length, size=size)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


# -- generalization --------------------------------------------------------------------------


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
        recurrent = isinstance(model, RecurrentSegmenter)
        n_eval = steps if steps is not None else (model.engine.test_steps if recurrent else None)
        for length in lengths:
            loader = make_test_loader(cfg, length, test_size, batch_size)
            summary = evaluate_at(model, loader, n_eval, device)
            records.append(
                dict(
                    summary,
                    model=name,
                    arch=cfg.MODEL.RECURRENT.CELL,
                    method=cfg.MODEL.RECURRENT.METHOD,
                    train_length=cfg.DATA.TRAIN_LENGTH,
                    test_length=length,
                    train_steps=cfg.MODEL.RECURRENT.TIMESTEPS,
                    eval_steps=n_eval if recurrent else cfg.MODEL.RECURRENT.TIMESTEPS,
                )
            )
    return records


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
    (prediction_t) * t (the authors' coloured timecourse), "onset": (H, W) the first step t at
    which the pixel is predicted contour (0: never)}.
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
    contour = prob > 0.5
    colored = (contour * np.arange(1, max_steps + 1)[:, None, None]).sum(0)
    onset = np.where(contour.any(0), contour.argmax(0) + 1, 0)
    return {"probability": prob, "iou": ious, "colored": colored, "onset": onset}
