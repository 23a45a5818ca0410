"""The work of the ``pathfinder_*`` analysis commands: load the checkpoints, run one analysis,
write its records (``OUT.csv`` + ``OUT.json``) and its figure (``OUT.png``), and print a
summary line per model. ``OUT`` is an output stem (a path without extension).
"""

from __future__ import annotations

import csv
import io
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from crbp_d2.utils.io import atomic_write_json, atomic_write_text

from ..data.datasets import marker_radius_at_input
from ..modeling import RecurrentSegmenter
from .analysis import (
    PAPER_LENGTHS,
    generalization_matrix,
    hidden_trajectories,
    load_trained,
    make_test_loader,
    state_space,
    timecourse,
)
from .baselines import dataset_pairs, evaluate_baselines
from .evaluator import iou_over_steps
from .plots import plot_generalization, plot_iou_over_steps, plot_state_space, plot_timecourse

Log = Callable[[str], None]
Record = Dict[str, object]


def write_records(records: List[Record], stem: str) -> Tuple[str, str]:
    """Write records as ``stem.csv`` (one column per key seen) and ``stem.json``, atomically;
    returns both paths."""
    fields: List[str] = []
    for record in records:
        fields += [k for k in record if k not in fields]
    text = io.StringIO()
    writer = csv.DictWriter(text, fields)
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(f"{stem}.csv", text.getvalue())
    atomic_write_json(records, f"{stem}.json")
    return f"{stem}.csv", f"{stem}.json"


def generalization_report(
    checkpoints: Dict[str, str],
    out: str,
    lengths: Sequence[int] = PAPER_LENGTHS,
    test_size: Optional[int] = None,
    steps: Optional[int] = None,
    batch_size: int = 32,
    device: str = "cpu",
    data_overrides: Sequence[str] = (),
    log: Log = print,
) -> List[Record]:
    """:func:`~.analysis.generalization_matrix` -> ``out.{csv,json,png}``; returns the records."""
    records = generalization_matrix(
        checkpoints, lengths, test_size, steps, batch_size, device, data_overrides
    )
    csv_path, json_path = write_records(records, out)
    plot_generalization(records, out + ".png")
    for r in records:
        log(
            f"{r['model']:>16} train PF{r['train_length']} -> test PF{r['test_length']}: "
            f"IoU {r['iou']:.4f}"
        )
    log(f"wrote {csv_path}, {json_path}, {out}.png")
    return records


def steps_summary(rows: Sequence[Dict], train_steps: int, max_steps: int) -> str:
    """One line of IoU over steps (``rows[t]`` at step t = 0..max_steps): at the training steps N
    when evaluated (``IoU@N=10``), the best, and at the last step; each label says its step."""
    parts = []
    if train_steps <= max_steps:
        parts.append(f"IoU@N={train_steps} {rows[train_steps]['iou']:.4f}")
    else:
        parts.append(f"(N={train_steps} is past --max-steps {max_steps})")
    best = max(range(len(rows)), key=lambda t: rows[t]["iou"])
    parts.append(f"best {rows[best]['iou']:.4f} (t={best})")
    parts.append(f"IoU@{max_steps} {rows[-1]['iou']:.4f}")
    return ", ".join(parts)


def steps_report(
    checkpoints: Dict[str, str],
    out: str,
    max_steps: int = 40,
    test_length: Optional[int] = None,
    test_size: Optional[int] = None,
    batch_size: int = 32,
    device: str = "cpu",
    log: Log = print,
) -> List[Record]:
    """IoU after t = 0..max_steps for every model -> ``out.{csv,json,png}`` (one record per model
    and step, and one per baseline: marker only, all ink and the best flood fill, on the first
    model's test images); returns the records."""
    records: List[Record] = []
    curves, train_steps = {}, {}
    baselines: Dict[str, float] = {}
    for name, path in checkpoints.items():
        model, cfg = load_trained(path, device)
        loader = make_test_loader(cfg, test_length, test_size, batch_size)
        if not baselines:
            scores = evaluate_baselines(
                dataset_pairs(loader.dataset), marker_radius_at_input(cfg), best_by="iou"
            )
            baselines = {
                "marker only": scores["marker_only"]["iou"],
                "all ink": scores["all_ink"]["iou"],
                "flood fill": scores["flood_fill_best"]["iou"],
            }
            records += [
                {"model": label, "method": "baseline", "steps": None, "iou": iou}
                for label, iou in baselines.items()
            ]
        rows = iou_over_steps(model, loader, max_steps, device)
        n = cfg.MODEL.RECURRENT.TIMESTEPS
        curves[name], train_steps[name] = rows, n
        for r in rows:
            records.append(
                dict(
                    r,
                    model=name,
                    method=cfg.MODEL.RECURRENT.METHOD,
                    train_steps=n,
                    train_length=cfg.DATA.TRAIN_LENGTH,
                    test_length=test_length or cfg.DATA.TEST_LENGTH,
                )
            )
        log(f"{name}: {steps_summary(rows, n, max_steps)}")
    write_records(records, out)
    plot_iou_over_steps(curves, train_steps, out + ".png", baselines)
    log(f"wrote {out}.csv/.json/.png")
    return records


def state_space_report(
    checkpoints: Dict[str, str],
    out: str,
    max_steps: int = 40,
    images: int = 64,
    pool: int = 8,
    components: int = 2,
    compare_step: Optional[Dict[str, int]] = None,
    test_length: Optional[int] = None,
    batch_size: int = 32,
    device: str = "cpu",
    log: Log = print,
) -> Dict[str, object]:
    """The state space of every model's trajectories t = 1..max_steps (:func:`~.analysis.
    state_space`) -> ``out.json`` (per model: distance mean/SD, explained variance; KS tests),
    ``out_distances.{csv,json}`` (per-image distances) and ``out.png``; returns the summary."""
    trajectories, train_steps = {}, {}
    for name, path in checkpoints.items():
        model, cfg = load_trained(path, device)
        if not isinstance(model, RecurrentSegmenter):
            raise ValueError(f"{name}: the state space needs a recurrent model")
        loader = make_test_loader(cfg, test_length, max(images, batch_size), batch_size)
        trajectories[name] = hidden_trajectories(model, loader, max_steps, pool, images, device)
        train_steps[name] = min(cfg.MODEL.RECURRENT.TIMESTEPS, max_steps)
    result = state_space(trajectories, train_steps, components, compare_step)
    summary: Dict[str, object] = {
        "models": {},
        "ks": result["ks"],
        "pool": pool,
        "components": components,
        "images": images,
        "max_steps": max_steps,
    }
    rows = []
    for name, m in result["models"].items():
        s = summary["models"][name] = {
            "compare_step": m["compare_step"],
            "final_step": m["final_step"],
            "explained_variance": m["explained_variance"],
            "pca_distance_mean": float(np.mean(m["pca_distance"])),
            "pca_distance_sd": float(np.std(m["pca_distance"])),
            "raw_distance_mean": float(np.mean(m["raw_distance"])),
            "raw_distance_sd": float(np.std(m["raw_distance"])),
        }
        for i, (d, r) in enumerate(zip(m["pca_distance"], m["raw_distance"])):
            rows.append(
                {"model": name, "image": i, "pca_distance": float(d), "raw_distance": float(r)}
            )
        log(
            f"{name}: distance(h_{m['compare_step']}, h_{m['final_step']}) PCA mean "
            f"{s['pca_distance_mean']:.4g} (SD {s['pca_distance_sd']:.3g}), "
            f"raw {s['raw_distance_mean']:.4g}"
        )
    for k in result["ks"]:
        log(
            f"KS {k['model_a']} vs {k['model_b']} ({k['distance']}): "
            f"D={k['statistic']:.3f} p={k['p_value']:.3g}"
        )
    atomic_write_json(summary, out + ".json")
    write_records(rows, out + "_distances")
    plot_state_space(result, out + ".png")
    log(f"wrote {out}.json, {out}_distances.csv, {out}.png")
    return summary


def timecourse_report(
    checkpoint: str,
    out: str,
    max_steps: int = 40,
    index: int = 0,
    test_length: Optional[int] = None,
    batch_size: int = 32,
    device: str = "cpu",
    log: Log = print,
) -> List[float]:
    """Image ``index`` of the first test batch step by step (:func:`~.analysis.timecourse`) ->
    ``out.json`` (its IoU per step) and ``out.png``; returns the IoU per step t = 1..max_steps."""
    model, cfg = load_trained(checkpoint, device)
    if not isinstance(model, RecurrentSegmenter):
        raise ValueError("the timecourse needs a recurrent model (hgru or convlstm)")
    loader = make_test_loader(cfg, test_length, batch_size, batch_size)
    image, label = next(iter(loader))
    if not 0 <= index < image.shape[0]:
        raise ValueError(f"--index {index} outside the first batch of {image.shape[0]}")
    course = timecourse(model, image.to(device), label.to(device), max_steps, index)
    atomic_write_json(
        {
            "checkpoint": checkpoint,
            "index": index,
            "train_steps": cfg.MODEL.RECURRENT.TIMESTEPS,
            "iou_per_step": course["iou"],
        },
        out + ".json",
    )
    plot_timecourse(image[index, 0].numpy(), label[index].numpy(), course, out + ".png")
    log(" ".join(f"t{t + 1}:{v:.2f}" for t, v in enumerate(course["iou"])))
    log(f"wrote {out}.json and {out}.png")
    return course["iou"]
