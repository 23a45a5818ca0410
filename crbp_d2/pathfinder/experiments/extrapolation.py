"""Pathfinder extrapolation: trained on short contours, tested on longer ones at more steps.

The question (issue 17): does a weight-tied recurrent model (hGRU trained with C-RBP, RBP, BPTT,
C-BPTT) trace contours longer than it was trained on when it runs more steps, where feed-forward
controls of fixed depth (the authors' 6-layer CNN at ~1x and ~4x the hGRU's parameters, the
6-layer feed-forward hGRU with untied weights) cannot?

* Test sets (:func:`length_params`): PF9 (the training length) and PF14, PF20, PF25, drawn by the
  same generator with the training set's paddles, spacing, marker, padding and downscaling; the
  canvas grows with the contour length (the end-to-end extent of a contour grows about linearly
  with its length) and the number of distractors with the canvas area (the same density).
* Runs (:data:`MODELS` x seeds): each trained once (``configs/pathfinder/extrapolation/``), then
  evaluated on every test set; recurrent models are read out at every step 1..max(3N, 60) in one
  pass. Each run writes ``RUNS_DIR/MODEL_sSEED.json`` (its records and a fingerprint of its
  config and test sets); a run whose record is there with the same fingerprint is skipped, so the
  protocol resumes where it stopped.
* Aggregation (:func:`write_report`): ``pathfinder_extrapolation.{json,md,png}`` and the
  timecourse of C-RBP on one PF20 image; the hypotheses H1-H3 (docs/pathfinder.md) are marked
  held / not held / not yet measured from the records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from crbp_d2.contours.generator import PathfinderParams
from crbp_d2.utils.io import atomic_write_json, atomic_write_text
from crbp_d2.utils.report import markdown_table, pyplot

from ...utils.machine import machine_record
from ..config import (
    CELL_KEYS_MOVED,
    CONFIG_DIR,
    REPO_ROOT,
    flat_config,
    get_default_config,
    load_config,
)
from ..data.datasets import InMemoryPathfinder, generator_params
from ..evaluation.baselines import dataset_pairs, evaluate_baselines
from ..evaluation.evaluator import METRIC_KEYS, evaluate_model
from ..evaluation.plots import plot_timecourse as draw_timecourse
from ..modeling import count_parameters
from .cpu_protocol import FLOOD_RADII

STEM = "pathfinder_extrapolation"
DENSE_STEM = "pathfinder_extrapolation_dense"  # configs/pathfinder/extrapolation_dense
CONFIGS = CONFIG_DIR / "extrapolation"
TEST_LENGTHS = (9, 14, 20, 25)
SEEDS = (0, 1)
MIN_EVAL_STEPS = 60  # recurrent models are read out at every step 1..max(3N, 60)
CANVAS_MULTIPLE = 8


@dataclass(frozen=True)
class ModelSpec:
    """One model of the protocol: its config under ``configs/pathfinder/extrapolation/``."""

    key: str
    label: str
    recurrent: bool


MODELS: Tuple[ModelSpec, ...] = (
    ModelSpec("crbp", "C-RBP-20", True),
    ModelSpec("rbp", "RBP-20 (no LCP)", True),
    ModelSpec("bptt", "BPTT-6", True),
    ModelSpec("cbptt", "C-BPTT-6", True),
    ModelSpec("cnn", "CNN-6 (~1x params)", False),
    ModelSpec("cnn_x4", "CNN-6 (~4x params)", False),
    ModelSpec("ff_hgru", "FF hGRU (6 untied layers)", False),
)
MODEL_BY_KEY = {m.key: m for m in MODELS}

Record = Dict[str, object]
Log = Callable[[str], None]


# -- test sets ---------------------------------------------------------------------------------


def length_params(cfg, length: int) -> Tuple[PathfinderParams, int]:
    """(generator settings, network input side) of the PF``length`` test set for a config trained
    on ``DATA.TRAIN_LENGTH``: the training set's settings with the canvas scaled by
    length / train length (rounded up to a multiple of 8 whose downscaled side is whole), the
    distractor count scaled by the canvas area, the input side by the same downscaling factor.
    Lengths up to the training length keep the training canvas."""
    base = generator_params(cfg, cfg.DATA.TRAIN_LENGTH)
    ratio = cfg.DATA.IMAGE_SIZE / base.canvas_size
    canvas = base.canvas_size
    if length > cfg.DATA.TRAIN_LENGTH:
        step = CANVAS_MULTIPLE
        while abs(step * ratio - round(step * ratio)) > 1e-9:
            step += CANVAS_MULTIPLE
        canvas = int(math.ceil(base.canvas_size * length / cfg.DATA.TRAIN_LENGTH / step) * step)
    distractors = int(round(base.num_distractors * (canvas / base.canvas_size) ** 2))
    params = generator_params(cfg, length)
    params = dataclasses.replace(params, canvas_size=canvas, num_distractors=distractors)
    return params, int(round(canvas * ratio))


def cached_in_memory(
    params: PathfinderParams,
    num: int,
    seed: int,
    image_size: int,
    random_flip: bool,
    cache_dir: Optional[str],
) -> InMemoryPathfinder:
    """:class:`InMemoryPathfinder` of these settings, generated once and kept in ``cache_dir``
    (a ``.pt`` file named by a hash of the settings; None: no cache)."""
    key = json.dumps([params.__dict__, num, seed, image_size], sort_keys=True, default=str)
    path = None
    if cache_dir:
        name = f"pf{params.contour_length}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
        path = os.path.join(cache_dir, name)
        if os.path.isfile(path):
            stored = torch.load(path, weights_only=True)
            dataset = InMemoryPathfinder.__new__(InMemoryPathfinder)
            dataset.images, dataset.labels = stored["images"], stored["labels"]
            dataset.params, dataset.seed, dataset.flip_seed = params, seed, seed
            dataset.random_flip, dataset.epoch = random_flip, 0
            return dataset
    dataset = InMemoryPathfinder(params, num, seed, image_size, random_flip)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save({"images": dataset.images, "labels": dataset.labels}, tmp)
        os.replace(tmp, path)
    return dataset


def build_test_set(cfg, length: int, size: int, cache_dir: Optional[str]) -> InMemoryPathfinder:
    """The PF``length`` test set of :func:`length_params` (``DATA.TEST_SEED``, ``size`` images)."""
    params, image_size = length_params(cfg, length)
    return cached_in_memory(
        params, size, cfg.DATA.TEST_SEED, image_size, cfg.DATA.RANDOM_FLIP, cache_dir
    )


def marker_radius_for(cfg, length: int) -> float:
    """Marker radius in input pixels of the PF``length`` test set (the same at every length)."""
    params, image_size = length_params(cfg, length)
    return params.marker_radius * image_size / params.canvas_size


# -- the protocol's settings -------------------------------------------------------------------


def default_out_dir(stem: str) -> str:
    """``output/pathfinder/`` + ``stem`` without its ``pathfinder_`` prefix: each results stem
    (recipe) keeps its own checkpoints, so one recipe's runs never resume another's."""
    name = stem[len("pathfinder_") :] if stem.startswith("pathfinder_") else stem
    return os.path.join(REPO_ROOT, "output", "pathfinder", name)


@dataclass
class Settings:
    """What a protocol run uses; ``smoke`` shrinks everything to a seconds-long check."""

    out_dir: str = default_out_dir(STEM)
    results_dir: str = os.path.join(REPO_ROOT, "docs", "results")
    models: Tuple[str, ...] = tuple(m.key for m in MODELS)
    seeds: Tuple[int, ...] = SEEDS
    test_lengths: Tuple[int, ...] = TEST_LENGTHS
    test_size: int = 128
    overrides: Tuple[str, ...] = ()
    shared_machine: bool = False
    min_eval_steps: int = MIN_EVAL_STEPS
    smoke: bool = False
    data_cache: Optional[str] = None  # default: OUT_DIR/data
    config_dir: str = str(CONFIGS)  # MODEL.yaml for each model (extrapolation_gpu: paper scale)
    stem: str = STEM  # results file names

    @property
    def runs_dir(self) -> str:
        return os.path.join(self.results_dir, f"{self.stem}_runs")

    @property
    def cache_dir(self) -> str:
        return self.data_cache or os.path.join(self.out_dir, "data")


SMOKE_OVERRIDES = (
    "MODEL.CHANNELS", "4",
    "DATA.TRAIN_SIZE", "16",
    "SOLVER.BATCH_SIZE", "8",
    "SOLVER.EPOCHS", "1",
    "SOLVER.MAX_ITERS_PER_EPOCH", "1",
    "TEST.SPECTRAL_RADIUS_ITERS", "0",
    "TEST.EVAL_PERIOD", "100",
)  # fmt: skip


def run_config(settings: Settings, model: str, seed: int):
    """The frozen config of run (``model``, ``seed``): its YAML + the settings' overrides."""
    if model not in MODEL_BY_KEY:
        raise ValueError(f"unknown model {model!r}; choose from {list(MODEL_BY_KEY)}")
    overrides = list(SMOKE_OVERRIDES if settings.smoke else ()) + list(settings.overrides)
    overrides += ["SEED", str(seed), "OUTPUT_DIR", run_dir(settings, model, seed)]
    overrides += ["DATA.TEST_SIZE", str(settings.test_size)]
    if settings.smoke and MODEL_BY_KEY[model].recurrent:
        steps = "6" if model in ("bptt", "cbptt") else "4"
        overrides += ["MODEL.RECURRENT.TIMESTEPS", steps, "MODEL.RECURRENT.NEUMANN_STEPS", "3"]
    return load_config(os.path.join(settings.config_dir, f"{model}.yaml"), overrides)


def run_name(model: str, seed: int) -> str:
    return f"{model}_s{seed}"


def run_dir(settings: Settings, model: str, seed: int) -> str:
    return os.path.join(settings.out_dir, run_name(model, seed))


def eval_steps(settings: Settings, n: int) -> int:
    """Largest step count read out for a recurrent model trained with N = ``n`` steps."""
    return max(3 * n, 0 if settings.smoke else settings.min_eval_steps)


def config_changes(cfg) -> List[Tuple[str, str]]:
    """The settings of ``cfg`` that differ from the Pathfinder defaults (``OUTPUT_DIR`` aside),
    as sorted ``(key, repr(value))`` pairs: what decides a run, so that a key added to the
    defaults later (with a default that keeps the old behaviour) does not invalidate runs."""
    defaults = flat_config(get_default_config())
    return sorted(
        (_FINGERPRINT_NAMES.get(key, key), repr(value))
        for key, value in flat_config(cfg).items()
        if key != "OUTPUT_DIR" and (key not in defaults or defaults[key] != value)
    )


# Keys moved after runs were recorded keep their old names in the fingerprint, so that moving a
# key (the cell's keys into MODEL.RECURRENT) leaves finished runs finished.
_FINGERPRINT_NAMES: Dict[str, str] = {new: old for old, new in CELL_KEYS_MOVED.items()}


def fingerprint(settings: Settings, cfg) -> str:
    """Hash of what decides a run's records: its config's changes from the defaults, the test
    sets, the step range."""
    n = cfg.MODEL.RECURRENT.TIMESTEPS
    key = [
        config_changes(cfg),
        list(settings.test_lengths),
        settings.test_size,
        eval_steps(settings, n),
    ]
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]


def record_path(settings: Settings, model: str, seed: int) -> str:
    return os.path.join(settings.runs_dir, f"{run_name(model, seed)}.json")


def finished(settings: Settings, model: str, seed: int) -> bool:
    """True when the run's record exists with the fingerprint of the current settings."""
    path = record_path(settings, model, seed)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        stored = json.load(f)
    return stored.get("fingerprint") == fingerprint(settings, run_config(settings, model, seed))


# -- one run: train, then evaluate on every test length -----------------------------------------


def evaluate_run(model, cfg, settings: Settings, label: str, key: str) -> List[Record]:
    """Records of a trained ``model`` on every test length: recurrent models at every step
    1..max(3N, 60) (one pass per batch), feed-forward ones once (``steps`` = their layers)."""
    recurrent = getattr(model, "recurrent", False)
    n = cfg.MODEL.RECURRENT.TIMESTEPS
    top = eval_steps(settings, n)
    records: List[Record] = []
    params = count_parameters(model)
    for length in settings.test_lengths:
        dataset = build_test_set(cfg, length, settings.test_size, settings.cache_dir)
        loader = DataLoader(dataset, batch_size=cfg.TEST.BATCH_SIZE, shuffle=False)
        steps = list(range(1, top + 1)) if recurrent else [None]
        device = next(model.parameters()).device
        results = evaluate_model(model, loader, device, steps, loss_kind=cfg.SOLVER.LOSS)
        set_params, image_size = length_params(cfg, length)
        for s, summary in results.items():
            layers = cfg.MODEL.CNN_LAYERS if cfg.MODEL.RECURRENT.CELL == "cnn" else n
            records.append(
                dict(
                    {k: summary[k] for k in METRIC_KEYS},
                    model=key,
                    label=label,
                    arch=cfg.MODEL.RECURRENT.CELL,
                    method=cfg.MODEL.RECURRENT.METHOD if recurrent else "feedforward",
                    recurrent=bool(recurrent),
                    params=params,
                    seed=cfg.SEED,
                    train_length=cfg.DATA.TRAIN_LENGTH,
                    test_length=length,
                    train_steps=n if recurrent else None,
                    steps=int(s) if recurrent else layers,
                    canvas_size=set_params.canvas_size,
                    image_size=image_size,
                    shared_machine=settings.shared_machine,
                )
            )
    return records


def device_name(device: torch.device) -> str:
    """The card's name for a CUDA device, else "cpu"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def train_and_evaluate(settings: Settings, model_key: str, seed: int, log: Log = print) -> str:
    """Train run (model, seed) (continuing a partial one), evaluate it, write its record file.
    Returns the record path."""
    from ..train.loop import Trainer, prepare_output_dir  # heavy imports only here

    spec = MODEL_BY_KEY[model_key]
    cfg = run_config(settings, model_key, seed)
    output = cfg.OUTPUT_DIR
    last = os.path.join(output, "last.pth")
    train_set = None  # on_the_fly / disk (the GPU set-up): the trainer builds it with workers
    if cfg.DATA.SOURCE == "memory":
        train_set = cached_in_memory(
            generator_params(cfg, cfg.DATA.TRAIN_LENGTH),
            cfg.DATA.TRAIN_SIZE,
            cfg.DATA.SEED,
            cfg.DATA.IMAGE_SIZE,
            cfg.DATA.RANDOM_FLIP,
            settings.cache_dir,
        )
    test_set = build_test_set(cfg, cfg.DATA.TRAIN_LENGTH, settings.test_size, settings.cache_dir)
    resume = os.path.isfile(last)
    prepare_output_dir(output, resume=resume, overwrite=not resume)
    load = os.getloadavg()[0]
    tic = time.time()
    trainer = Trainer(cfg, train_set=train_set, test_set=test_set, resume=resume, progress=False)
    if trainer.epoch < cfg.SOLVER.EPOCHS:
        trainer.train()
    train_seconds = time.time() - tic
    model = trainer.model
    model.eval()
    tic = time.time()
    records = evaluate_run(model, cfg, settings, spec.label, model_key)
    path = record_path(settings, model_key, seed)
    atomic_write_json(
        {
            "model": model_key,
            "seed": seed,
            "fingerprint": fingerprint(settings, cfg),
            "train_seconds": train_seconds,
            "eval_seconds": time.time() - tic,
            "resumed": resume,
            "shared_machine": settings.shared_machine,
            "load_average_at_start": load,
            "machine": dict(machine_record(), device=device_name(trainer.device)),
            "config": os.path.relpath(
                os.path.join(settings.config_dir, f"{model_key}.yaml"), REPO_ROOT
            ),
            "overrides": list(settings.overrides),
            "records": records,
        },
        path,
    )
    log(f"{run_name(model_key, seed)}: trained {train_seconds / 60:.1f} min; wrote {path}")
    return path


# -- the whole protocol ------------------------------------------------------------------------


def pending_runs(settings: Settings) -> List[Tuple[str, int]]:
    """(model, seed) pairs without an up-to-date record, seed-major (every model's seed 0
    first) so a partial protocol has one complete seed early."""
    return [(m, s) for s in settings.seeds for m in settings.models if not finished(settings, m, s)]


def settings_arguments(settings: Settings) -> List[str]:
    """The command-line arguments that rebuild ``settings`` in a child process."""
    args = ["--out-dir", settings.out_dir, "--results", settings.results_dir]
    args += [
        "--test-size",
        str(settings.test_size),
        "--min-eval-steps",
        str(settings.min_eval_steps),
    ]
    args += ["--test-lengths", *map(str, settings.test_lengths)]
    args += ["--configs", settings.config_dir, "--stem", settings.stem]
    if settings.data_cache:
        args += ["--data-cache", settings.data_cache]
    if settings.shared_machine:
        args.append("--shared-machine")
    if settings.smoke:
        args.append("--smoke")
    return args + list(settings.overrides)


def run_all(
    settings: Settings,
    jobs: int = 2,
    progress: bool = True,
    log: Log = print,
    threads_per_job: int = 1,
) -> None:
    """Run every pending run as a child process (``threads_per_job`` threads; 0: as the
    environment says), ``jobs`` at a time, with a progress
    bar over runs; each child writes its record (so an interrupted protocol resumes). Raises
    RuntimeError naming the runs that failed (their logs are in ``out_dir``)."""
    todo = pending_runs(settings)
    total = len(settings.models) * len(settings.seeds)
    log(f"{total - len(todo)} of {total} runs already recorded; {len(todo)} to run")
    if not todo:
        return
    os.makedirs(settings.out_dir, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=total - len(todo), desc="runs", unit="run")
    queue, failed, lock = list(todo), [], threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                model, seed = queue.pop(0)
            name = run_name(model, seed)
            command = [sys.executable, "-m", "crbp_d2.cli.pathfinder_extrapolation"]
            command += ["--only-run", model, str(seed), *settings_arguments(settings)]
            env = dict(os.environ)
            if threads_per_job:
                env.update(
                    OMP_NUM_THREADS=str(threads_per_job), MKL_NUM_THREADS=str(threads_per_job)
                )
            with open(os.path.join(settings.out_dir, f"{name}.log"), "w") as out:
                code = subprocess.run(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
                ).returncode
            with lock:
                if code != 0:
                    failed.append(name)
                if bar is not None:
                    bar.set_postfix_str(f"{name} {'failed' if code else 'done'}")
                    bar.update(1)

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if bar is not None:
        bar.close()
    if failed:
        raise RuntimeError(f"runs failed: {failed}; see their logs in {settings.out_dir}")


# -- aggregation -------------------------------------------------------------------------------


# record name -> (evaluate_baselines' name, label)
BASELINES = {
    "marker_only": ("marker_only", "marker only"),
    "all_ink": ("all_ink", "all ink (no tracing)"),
    "flood_fill": ("flood_fill_best", "flood fill (best radius, oracle)"),
}


def baseline_records(settings: Settings, cfg=None) -> List[Record]:
    """Marker-only, all-ink and flood-fill (best radius of 1..4, an oracle) records on every
    test set, cached in ``RUNS_DIR/baselines.json`` (keyed by the test-set fingerprint; computed
    again when a baseline is missing). ``cfg``: the config whose test sets to use (default: the
    protocol's C-RBP run)."""
    cfg = cfg if cfg is not None else run_config(settings, "crbp", 0)
    key = fingerprint(settings, cfg) + json.dumps(list(settings.test_lengths))
    path = os.path.join(settings.runs_dir, "baselines.json")
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        have = {r["model"] for r in stored.get("records", [])}
        if stored.get("key") == key and have >= set(BASELINES):
            return stored["records"]
    records: List[Record] = []
    for length in settings.test_lengths:
        dataset = build_test_set(cfg, length, settings.test_size, settings.cache_dir)
        results = evaluate_baselines(
            dataset_pairs(dataset),
            marker_radius_for(cfg, length),
            FLOOD_RADII,
            batch_size=1,
            best_by="iou",
        )
        params, image_size = length_params(cfg, length)
        for method, (name, label) in BASELINES.items():
            row = dict({k: results[name][k] for k in METRIC_KEYS}, model=method, label=label)
            row.update(
                method=method,
                recurrent=False,
                params=0,
                seed=None,
                train_length=None,
                test_length=length,
                steps=None,
                canvas_size=params.canvas_size,
                image_size=image_size,
            )
            if method == "flood_fill":
                row["flood_fill_radius"] = results[name]["radius"]
            records.append(row)
    os.makedirs(settings.runs_dir, exist_ok=True)
    atomic_write_json({"key": key, "records": records}, path)
    return records


def collect_records(settings: Settings) -> Tuple[List[Record], List[dict]]:
    """(all records of the finished runs + baselines, the run summaries without records)."""
    records: List[Record] = []
    runs: List[dict] = []
    for seed in settings.seeds:
        for model in settings.models:
            if not finished(settings, model, seed):
                continue
            with open(record_path(settings, model, seed)) as f:
                stored = json.load(f)
            records += stored["records"]
            runs.append({k: v for k, v in stored.items() if k != "records"})
    return records + baseline_records(settings), runs


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def summary_rows(records: List[Record]) -> List[Dict[str, object]]:
    """Per (model, test length): IoU at N, at 3N and at the best step (mean over seeds; the
    best step of the mean curve), seeds, params. Feed-forward models and baselines: one IoU."""
    rows: List[Dict[str, object]] = []
    keys = list(dict.fromkeys((r["model"], r["test_length"]) for r in records))
    for model, length in keys:
        rs = [r for r in records if r["model"] == model and r["test_length"] == length]
        first = rs[0]
        seeds = sorted({r["seed"] for r in rs if r["seed"] is not None})
        row: Dict[str, object] = {
            "model": model,
            "label": first["label"],
            "test_length": length,
            "seeds": seeds,
            "params": first["params"],
            "recurrent": first["recurrent"],
        }
        if first["recurrent"]:
            n = int(first["train_steps"])
            curve: Dict[int, List[float]] = {}
            for r in rs:
                curve.setdefault(int(r["steps"]), []).append(float(r["iou"]))
            mean_curve = {t: _mean(v) for t, v in curve.items()}
            best = max(mean_curve, key=lambda t: mean_curve[t])
            row.update(
                N=n,
                iou_at_N=mean_curve.get(n, float("nan")),
                iou_at_3N=mean_curve.get(3 * n, float("nan")),
                best_step=best,
                iou_best=mean_curve[best],
                iou_at_N_per_seed=sorted(float(r["iou"]) for r in rs if r["steps"] == n),
                iou_at_3N_per_seed=sorted(float(r["iou"]) for r in rs if r["steps"] == 3 * n),
            )
        else:
            values = [float(r["iou"]) for r in rs]
            row.update(iou=_mean(values), iou_per_seed=sorted(values))
        rows.append(row)
    return rows


def _find(rows, model: str, length: int) -> Optional[Dict[str, object]]:
    for row in rows:
        if row["model"] == model and row["test_length"] == length:
            return row
    return None


FEEDFORWARD = ("cnn", "cnn_x4", "ff_hgru")


def hypotheses(rows: List[Dict[str, object]], train_length: int = 9) -> Dict[str, dict]:
    """H1-H3 of docs/pathfinder.md from the summary rows: {name: {statement, verdict ("held",
    "not held", "not yet measured"), evidence}}."""
    out: Dict[str, dict] = {}
    # H1: on PF14 and PF20, C-RBP at 3N >= every feed-forward control + 0.05
    evidence, verdict = [], "held"
    for length in (14, 20):
        crbp = _find(rows, "crbp", length)
        controls = [_find(rows, m, length) for m in FEEDFORWARD]
        if crbp is None or any(c is None for c in controls):
            verdict = "not yet measured"
            continue
        best_ff = max(controls, key=lambda c: c["iou"])
        margin = crbp["iou_at_3N"] - best_ff["iou"]
        evidence.append(
            f"PF{length}: C-RBP at 3N {crbp['iou_at_3N']:.3f} vs best control "
            f"{best_ff['label']} {best_ff['iou']:.3f} ({margin:+.3f})"
        )
        if margin < 0.05 and verdict == "held":
            verdict = "not held"
    out["H1"] = {
        "statement": "on PF14 and PF20, C-RBP at 3N is above every feed-forward control by "
        ">= 0.05 IoU",
        "verdict": verdict,
        "evidence": evidence,
    }
    # H2: N -> 3N on the longer sets: C-RBP rises or holds (>= -0.01), BPTT falls (< -0.01)
    longer = sorted({r["test_length"] for r in rows if r["test_length"] > train_length})
    evidence, verdict = [], "held" if longer else "not yet measured"
    for length in longer:
        crbp, bptt = _find(rows, "crbp", length), _find(rows, "bptt", length)
        if crbp is None or bptt is None:
            verdict = "not yet measured"
            continue
        dc = crbp["iou_at_3N"] - crbp["iou_at_N"]
        db = bptt["iou_at_3N"] - bptt["iou_at_N"]
        evidence.append(f"PF{length}: C-RBP N->3N {dc:+.3f}, BPTT N->3N {db:+.3f}")
        if (dc < -0.01 or db >= -0.01) and verdict == "held":
            verdict = "not held"
    out["H2"] = {
        "statement": "from N to 3N on the longer sets, C-RBP's IoU rises or holds (within 0.01) "
        "while BPTT's falls (by more than 0.01)",
        "verdict": verdict,
        "evidence": evidence,
    }
    # H3: C-RBP >= RBP at 3N on the longest set
    verdict, evidence = "not yet measured", []
    if longer:
        length = longer[-1]
        crbp, rbp = _find(rows, "crbp", length), _find(rows, "rbp", length)
        if crbp is not None and rbp is not None:
            verdict = "held" if crbp["iou_at_3N"] >= rbp["iou_at_3N"] else "not held"
            evidence.append(
                f"PF{length}: C-RBP at 3N {crbp['iou_at_3N']:.3f}, RBP at 3N {rbp['iou_at_3N']:.3f}"
            )
    out["H3"] = {
        "statement": "C-RBP >= RBP at 3N on the longest set",
        "verdict": verdict,
        "evidence": evidence,
    }
    return out


def protocol_seconds_from_scratch(runs: Sequence[Dict[str, object]]) -> Tuple[float, List[str]]:
    """Seconds of 1-thread jobs that ``runs`` (run records) take when every one is trained from
    scratch: a resumed run's training (its record counts only what was left) is counted at the mean
    training time of the same model's runs that were not resumed. Returns the seconds and the
    models that have no such run (their resumed runs' training is left out: a lower bound)."""
    from_scratch: Dict[str, List[float]] = {}
    for run in runs:
        if not run.get("resumed"):
            from_scratch.setdefault(str(run["model"]), []).append(float(run["train_seconds"]))
    seconds = sum(float(run["eval_seconds"]) for run in runs)
    seconds += sum(sum(times) for times in from_scratch.values())
    unmeasured: List[str] = []
    for run in runs:
        model = str(run["model"])
        if not run.get("resumed"):
            continue
        if model in from_scratch:
            seconds += float(np.mean(from_scratch[model]))
        elif model not in unmeasured:
            unmeasured.append(model)
    return seconds, unmeasured


def markdown_report(
    rows: List[Dict[str, object]], tests: Dict[str, dict], runs: List[dict], settings: Settings
) -> str:
    """The results table (IoU at N / 3N / best step per test length), baselines, hypotheses."""
    lengths = sorted({r["test_length"] for r in rows})
    header = ["model", "params", "seeds"] + [f"PF{n}: N / 3N / best (step)" for n in lengths]
    table = []
    order = [m.key for m in MODELS] + list(reversed(BASELINES))
    for key in order:
        cells = [_find(rows, key, n) for n in lengths]
        present = [c for c in cells if c is not None]
        if not present:
            continue
        first = present[0]
        line = [
            first["label"],
            f"{first['params']:,}" if first["params"] else "",
            ",".join(map(str, first["seeds"])) if first["seeds"] else "",
        ]
        for c in cells:
            if c is None:
                line.append("not run")
            elif c["recurrent"]:
                line.append(
                    f"{c['iou_at_N']:.3f} / {c['iou_at_3N']:.3f} / {c['iou_best']:.3f} "
                    f"({c['best_step']})"
                )
            else:
                line.append(f"{c['iou']:.3f}")
        table.append(line)
    canvases = {}
    cfg = run_config(settings, "crbp", 0)
    for n in lengths:
        params, image_size = length_params(cfg, n)
        canvases[n] = f"PF{n}: {params.canvas_size} px -> {image_size} px, " + (
            f"{params.num_distractors} distractors"
        )
    shared = any(r.get("shared_machine") for r in runs)
    machines = sorted({f"{r['machine']['cpu']} ({r['machine']['cores']} cores)" for r in runs})
    missing = [
        run_name(m, s)
        for s in settings.seeds
        for m in settings.models
        if not finished(settings, m, s)
    ]
    text = markdown_table(header, table) + "\n\n"
    text += (
        f"Pooled IoU on {settings.test_size} test images per length, mean over the seeds listed "
        "(recurrent: IoU after N steps / 3N steps / the best step 1..max(3N, 60) of the mean "
        "curve; feed-forward controls and baselines: one number). "
        f"Training recipe: {training_recipe(cfg)}. "
        f"Test sets: {'; '.join(canvases.values())}. "
        f"Machine: {', '.join(machines) or 'none yet'}"
        + ("; **timings from a shared machine**" if shared else "")
        + ".\n\n"
    )
    if runs:
        train = sum(r["train_seconds"] for r in runs) / 3600
        evaluation = sum(r["eval_seconds"] for r in runs) / 3600
        text += (
            f"Time: the recorded runs took {train + evaluation:.1f} h of 1-thread jobs "
            f"({train:.1f} h training, {evaluation:.1f} h evaluation), so about "
            f"{(train + evaluation) / 2:.1f} h of wall time as 2 jobs side by side on 2 cores"
            + (" (timings from a shared machine)" if shared else "")
            + ".\n\n"
        )
    resumed = [f"{r['model']}_s{r['seed']}" for r in runs if r.get("resumed")]
    if resumed:
        text += (
            f"Runs whose training was already done when their record was written (a pilot's or "
            f"an interrupted run's checkpoint of the same config; their train_seconds count only "
            f"what was left): {', '.join(resumed)}.\n\n"
        )
        seconds, unmeasured = protocol_seconds_from_scratch(runs)
        text += (
            f"Estimated for these runs trained from scratch: {seconds / 3600:.1f} h of 1-thread "
            f"jobs, about {seconds / 7200:.1f} h on 2 cores (each resumed run's training counted "
            "at the mean of the same model's runs trained from scratch"
            + (
                f"; no run of {', '.join(unmeasured)} was trained from scratch, so their "
                "training is left out and the estimate is a lower bound"
                if unmeasured
                else ""
            )
            + ").\n\n"
        )
    tracing = []
    for n in lengths:
        crbp, ink = _find(rows, "crbp", n), _find(rows, "all_ink", n)
        if crbp is not None and ink is not None:
            tracing.append(f"PF{n} {crbp['iou_at_3N'] - ink['iou']:+.3f}")
    if tracing:
        text += (
            "Tracing check: C-RBP-20 at 3N minus all ink (every ink pixel predicted: a model "
            "that finds the ink but does not trace the marked contour scores this): "
            + ", ".join(tracing)
            + ".\n\n"
        )
    seed_sets = {tuple(r["seeds"]) for r in rows if r.get("seeds")}
    text += "Hypotheses (docs/pathfinder.md, written before the final runs):\n\n"
    if len(seed_sets) > 1:
        text += (
            "**Provisional**: the models have different seeds recorded so far ("
            + "; ".join(",".join(map(str, s)) for s in sorted(seed_sets))
            + "), so these verdicts compare means over different seeds.\n\n"
        )
    for name, h in tests.items():
        evidence = "; ".join(h["evidence"]) if h["evidence"] else "no records yet"
        text += f"- **{name} {h['verdict']}**: {h['statement']}. {evidence}.\n"
    if missing:
        text += f"\nRuns not yet recorded ({len(missing)}): {', '.join(missing)}.\n"
    return text


def training_recipe(cfg) -> str:
    """One line naming what a config trains on: length, canvas, images, clutter, steps."""
    batches = cfg.DATA.TRAIN_SIZE // cfg.SOLVER.BATCH_SIZE
    cap = cfg.SOLVER.MAX_ITERS_PER_EPOCH
    steps = cfg.SOLVER.EPOCHS * (min(batches, cap) if cap > 0 else batches)
    distractors = generator_params(cfg, cfg.DATA.TRAIN_LENGTH).num_distractors
    return (
        f"PF{cfg.DATA.TRAIN_LENGTH} ({cfg.DATA.CANVAS_SIZE} px -> {cfg.DATA.IMAGE_SIZE} px), "
        f"{cfg.DATA.TRAIN_SIZE:,} images with {distractors} distractors, {steps:,} Adam steps "
        f"of batch {cfg.SOLVER.BATCH_SIZE} (lr {cfg.SOLVER.LR:g}, {cfg.SOLVER.LR_SCHEDULE})"
    )


def plot_curves(records: List[Record], path: str) -> None:
    """One panel per test length: IoU vs steps of each recurrent model (mean over seeds, thin
    lines per seed), the feed-forward controls and baselines as horizontal lines."""
    plt = pyplot()
    lengths = sorted({r["test_length"] for r in records})
    fig, axes = plt.subplots(
        1, len(lengths), figsize=(3.6 * len(lengths), 3.8), sharey=True, squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {m.key: colors[i % len(colors)] for i, m in enumerate(MODELS)}
    styles = {"marker_only": ("0.6", ":"), "all_ink": ("0.45", "-."), "flood_fill": ("0.3", ":")}
    top = max((int(r["steps"]) for r in records if r["recurrent"]), default=MIN_EVAL_STEPS)
    for ax, length in zip(axes[0], lengths):
        rs = [r for r in records if r["test_length"] == length]
        for model in dict.fromkeys(r["model"] for r in rs):
            mine = [r for r in rs if r["model"] == model]
            label = mine[0]["label"]
            if mine[0]["recurrent"]:
                by_seed: Dict[int, Dict[int, float]] = {}
                for r in mine:
                    by_seed.setdefault(r["seed"], {})[int(r["steps"])] = float(r["iou"])
                steps = sorted(set.intersection(*(set(c) for c in by_seed.values())))
                mean = [_mean([c[t] for c in by_seed.values()]) for t in steps]
                ax.plot(steps, mean, color=color_of[model], lw=1.6, label=label)
                for curve in by_seed.values():
                    xs = sorted(curve)
                    ax.plot(xs, [curve[t] for t in xs], color=color_of[model], lw=0.5, alpha=0.4)
                ax.axvline(mine[0]["train_steps"], color=color_of[model], ls=":", lw=0.8)
            else:
                value = _mean([float(r["iou"]) for r in mine])
                color, ls = styles.get(model, (color_of.get(model, "k"), "--"))
                ax.axhline(value, color=color, ls=ls, lw=1.2, label=label)
        ax.set_title(f"test PF{length}", fontsize=10)
        ax.set_xlim(1, top)
        ax.set_xlabel("inference steps t")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("IoU (pooled)")
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ncol = max(3, min(5, 2 * len(lengths) - 1))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    train = min((r["train_length"] for r in records if r["train_length"]), default="?")
    fig.suptitle(f"Trained on PF{train}; IoU vs steps on longer contours (dotted verticals: N)")
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_timecourse(settings: Settings, path: str, length: int = 20, seed: int = 0) -> bool:
    """The C-RBP model (``seed``) on the first PF``length`` test image, step by step; False
    when that run has no checkpoint."""
    from ..evaluation.analysis import load_trained, timecourse

    checkpoint = os.path.join(run_dir(settings, "crbp", seed), "last.pth")
    if not os.path.isfile(checkpoint) or length not in settings.test_lengths:
        return False
    model, cfg = load_trained(checkpoint)
    dataset = build_test_set(cfg, length, settings.test_size, settings.cache_dir)
    batch = [dataset[i] for i in range(min(cfg.TEST.BATCH_SIZE, len(dataset)))]
    image = torch.stack([b[0] for b in batch])
    label = torch.stack([b[1] for b in batch])
    top = eval_steps(settings, cfg.MODEL.RECURRENT.TIMESTEPS)
    course = timecourse(model, image, label, top)
    title = (
        f"C-RBP trained on PF{cfg.DATA.TRAIN_LENGTH} (N = {cfg.MODEL.RECURRENT.TIMESTEPS}), "
        f"run for {top} steps on a PF{length} image"
    )
    draw_timecourse(image[0, 0].numpy(), label[0].numpy(), course, path, title=title)
    return True


def report_provenance(runs: List[dict]) -> Dict[str, object]:
    """The report's provenance: the runs' machines and torch versions (every run trains and is
    evaluated as a 1-thread child process), the commit the report was written at, and whether
    any run shared its machine (then its timings are not clean numbers)."""
    here = machine_record()
    machines = sorted(
        {f"{r['machine'].get('cpu')} ({r['machine'].get('cores')} cores)" for r in runs}
    )
    return {
        "device": "; ".join(machines) or here["device"],
        "torch": "; ".join(sorted({str(r["machine"].get("torch")) for r in runs})) or here["torch"],
        "threads": 1,
        "git_commit": here["git_commit"],
        "shared_machine": any(bool(r.get("shared_machine")) for r in runs),
    }


def write_report(settings: Settings, log: Log = print) -> Dict[str, object]:
    """``STEM.json`` (records + per-run summaries + hypotheses), ``STEM.md`` and ``STEM.png``
    from the finished runs, and ``STEM_timecourse.png`` when C-RBP seed 0 is done."""
    torch.set_num_threads(1)
    records, runs = collect_records(settings)
    rows = summary_rows(records)
    train_length = run_config(settings, "crbp", 0).DATA.TRAIN_LENGTH
    tests = hypotheses(rows, train_length=train_length)
    stem = os.path.join(settings.results_dir, settings.stem)
    atomic_write_json(
        {
            "records": records,
            "summary": rows,
            "hypotheses": tests,
            "runs": runs,
            "provenance": report_provenance(runs),
        },
        stem + ".json",
    )
    text = markdown_report(rows, tests, runs, settings)
    atomic_write_text(stem + ".md", text)
    plot_curves(records, stem + ".png")
    if plot_timecourse(settings, stem + "_timecourse.png"):
        log(f"wrote {stem}_timecourse.png")
    log(text)
    return {"rows": rows, "hypotheses": tests, "runs": runs}


# -- pilots (item 6: a recipe on which the hGRU learns) -----------------------------------------


def _repo_relative(path: str) -> str:
    """``path`` relative to the repository when it lies inside it, else its file name alone
    (records hold no absolute paths)."""
    path, root = os.path.abspath(path), str(REPO_ROOT)
    if path.startswith(root + os.sep):
        return os.path.relpath(path, root)
    return os.path.join("<outside the repository>", os.path.basename(path))


PILOTS = "pathfinder_extrapolation_pilots"


def scoring_overrides(cfg, overrides: Sequence[str]):
    """``cfg`` with KEY VALUE ``overrides`` that change only how a trained model is scored
    (``TEST.*``, e.g. TEST.BATCH_SIZE); any other key raises ValueError naming it."""
    keys = list(overrides[::2])
    others = [k for k in keys if not str(k).startswith("TEST.")]
    if others:
        raise ValueError(
            f"a checkpoint is scored as it was trained: only TEST.* overrides apply, not {others}"
        )
    if not keys:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    try:
        cfg.merge_from_list(list(overrides))
    except (AssertionError, KeyError, ValueError) as err:  # yacs: odd length, unknown key, type
        raise ValueError(f"bad TEST.* override {list(overrides)}: {err}") from None
    cfg.freeze()
    return cfg


def run_pilot(
    settings: Settings,
    name: str,
    model_key: str,
    note: str = "",
    checkpoint: Optional[str] = None,
    log: Log = print,
) -> Dict[str, object]:
    """Train ``model_key`` with ``settings.overrides`` into ``out_dir/pilots/NAME`` (or evaluate
    an existing trainer ``checkpoint``), score it at N and 3N on ``settings.test_lengths`` next
    to the baselines, and add the result to ``results_dir/PILOTS.{json,md}`` (one entry per
    name; a re-run replaces it). Returns the entry."""
    from ..evaluation.analysis import load_trained

    pilot = dataclasses.replace(
        settings,
        out_dir=os.path.join(settings.out_dir, "pilots", name),
        results_dir=os.path.join(settings.out_dir, "pilots", name, "results"),
        seeds=(0,),
        data_cache=settings.cache_dir,
    )
    tic = time.time()
    load = os.getloadavg()[0]
    if checkpoint is None:
        train_and_evaluate(pilot, model_key, 0, log)
        with open(record_path(pilot, model_key, 0)) as f:
            records = json.load(f)["records"]
        source = _repo_relative(os.path.join(settings.config_dir, f"{model_key}.yaml"))
        cfg = run_config(pilot, model_key, 0)
    else:
        model, cfg = load_trained(checkpoint)
        cfg = scoring_overrides(cfg, settings.overrides)
        records = evaluate_run(model, cfg, pilot, MODEL_BY_KEY[model_key].label, model_key)
        source = _repo_relative(checkpoint)
    baselines = baseline_records(pilot, cfg)
    rows = summary_rows(records + baselines)
    scores = {}
    for length in pilot.test_lengths:
        own = _find(rows, model_key, length) or {}
        base = {name: (_find(rows, name, length) or {}).get("iou") for name in BASELINES}
        at_n = own.get("iou_at_N", own.get("iou"))
        scores[f"PF{length}"] = {
            "iou_at_N": at_n,
            "iou_at_3N": own.get("iou_at_3N"),
            "iou_best": own.get("iou_best"),
            "best_step": own.get("best_step"),
            **base,
            "minus_marker_only": None if at_n is None else at_n - base["marker_only"],
        }
    entry = {
        "name": name,
        "model": model_key,
        "source": source,
        "overrides": list(settings.overrides),
        "note": note,
        "params": records[0]["params"],
        "scores": scores,
        "wall_seconds": time.time() - tic,
        "shared_machine": settings.shared_machine,
        "load_average_at_start": load,
        "machine": machine_record(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    path = os.path.join(settings.results_dir, PILOTS + ".json")
    entries = []
    if os.path.isfile(path):
        with open(path) as f:
            entries = [e for e in json.load(f) if e["name"] != name]
    entries.append(entry)
    atomic_write_json(entries, path)
    write_pilots_markdown(settings.results_dir)
    log(json.dumps(scores, indent=1))
    return entry


def write_pilots_markdown(results_dir: str) -> str:
    """``PILOTS.md`` from ``PILOTS.json``: one row per pilot and test length."""
    with open(os.path.join(results_dir, PILOTS + ".json")) as f:
        entries = json.load(f)
    header = ["pilot", "model", "overrides", "test", "IoU at N", "at 3N", "best (step)",
              "marker only",
              "all ink", "flood fill", "minus marker", "minus all ink", "wall min",
              "shared machine"]  # fmt: skip
    rows = []
    for e in entries:
        for test, s in e["scores"].items():
            rows.append(
                [
                    e["name"],
                    e["model"],
                    " ".join(f"`{o}`" for o in e["overrides"]) or "none",
                    test,
                    f"{s['iou_at_N']:.3f}",
                    "" if s["iou_at_3N"] is None else f"{s['iou_at_3N']:.3f}",
                    (
                        ""
                        if s.get("iou_best") is None
                        else f"{s['iou_best']:.3f} ({s['best_step']})"
                    ),
                    f"{s['marker_only']:.3f}",
                    "" if s.get("all_ink") is None else f"{s['all_ink']:.3f}",
                    f"{s['flood_fill']:.3f}",
                    f"{s['minus_marker_only']:+.3f}",
                    "" if s.get("all_ink") is None else f"{s['iou_at_N'] - s['all_ink']:+.3f}",
                    f"{e['wall_seconds'] / 60:.1f}",
                    "yes" if e["shared_machine"] else "no",
                ]
            )
    notes = "\n".join(f"- **{e['name']}**: {e['note']}" for e in entries if e["note"])
    text = markdown_table(header, rows) + "\n\n" + (notes + "\n" if notes else "")
    atomic_write_text(os.path.join(results_dir, PILOTS + ".md"), text)
    return text
