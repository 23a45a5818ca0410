"""Detectron2 training resumes exactly: a run killed (SIGKILL) after a checkpoint and continued
with ``--resume`` ends with the weights and optimizer state of the uninterrupted run, and its
metrics.json has one row per iteration; the same for the LazyConfig trainer and a 2-process CPU
run (there resumed from an earlier checkpoint). Plus the pieces: the resumable data loader (same
batches after a restart, with or without DataLoader workers, aspect-ratio buckets included), the
random-state helpers, old checkpoints and the metrics.json clean-up (~50 s in all)."""

import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2")

from crbp_d2.rfpn.data.resumable import ResumableTrainLoader  # noqa: E402
from crbp_d2.rfpn.train import trainer as training  # noqa: E402

import torch  # noqa: E402
from detectron2.data.samplers import TrainingSampler  # noqa: E402
from detectron2.engine import hooks  # noqa: E402

from crbp_d2.cli import train_net  # noqa: E402
from crbp_d2.utils.rng import derived_seed, preserved_rng, seeded_rng  # noqa: E402

# short recurrences on purpose: the fixed-point methods warn that the state has not converged
# (tests/test_recurrent_engine.py asserts that warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*has not converged:RuntimeWarning")

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "quick" / "R-FPN-R50-CRBP-synthetic-test.yaml")
# 4 iterations of 2 images, a checkpoint every 2 (after iterations 1 and 3), a fixed seed
OPTS = ("DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4",
        "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "3")  # fmt: skip
KILL_AT = 2  # the killed run finishes iteration 2 (after the checkpoint of 1), writes its row

# The interrupted run: metrics.json rows every iteration, SIGKILL after iteration KILL_AT.
KILLED_RUN = f"""
import os, signal, sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from crbp_d2.rfpn.train import trainer as training
from crbp_d2.cli import train_net
from detectron2.engine import hooks

class Kill(hooks.HookBase):
    def after_step(self):
        if self.trainer.iter == {KILL_AT}:
            os.kill(os.getpid(), signal.SIGKILL)

build_hooks = training.Trainer.build_hooks
def every_row_then_kill(self):
    ret = build_hooks(self)
    for hook in ret:
        if isinstance(hook, hooks.PeriodicWriter):
            hook._period = 1
    return ret + [Kill()]
training.Trainer.build_hooks = every_row_then_kill
training.train_or_evaluate(train_net.parse_args(sys.argv[2:]))
"""


def _args(output: Path, *flags: str):
    return ["--config-file", CONFIG, *flags, "OUTPUT_DIR", str(output), *OPTS]


def _iterations(output: Path):
    rows = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    return [row["iteration"] for row in rows]


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and torch.equal(a, b)):
            pytest.fail(f"{where} differs")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    build_hooks = training.Trainer.build_hooks

    def every_row(self):  # metrics.json rows every iteration (Detectron2: every 20)
        ret = build_hooks(self)
        for hook in ret:
            if isinstance(hook, hooks.PeriodicWriter):
                hook._period = 1
        return ret

    monkeypatch.setattr(training.Trainer, "build_hooks", every_row)

    whole = tmp_path / "uninterrupted"
    training.train_or_evaluate(train_net.parse_args(_args(whole)))

    killed = tmp_path / "killed"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(torch.get_num_threads()), *_args(killed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (killed / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert _iterations(killed) == [0, 1, 2]  # iteration 2 is done again after the resume

    training.train_or_evaluate(train_net.parse_args(_args(killed, "--resume")))

    assert _iterations(whole) == [0, 1, 2, 3]
    assert _iterations(killed) == [0, 1, 2, 3]  # the killed run's row of iteration 2 dropped
    expected, resumed = _load(whole / "model_final.pth"), _load(killed / "model_final.pth")
    assert resumed["iteration"] == expected["iteration"] == 3
    assert resumed["model"].keys() == expected["model"].keys()
    different = [k for k, v in expected["model"].items() if not torch.equal(v, resumed["model"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    _assert_same_tensors(
        expected["trainer"]["_trainer"]["optimizer"],
        resumed["trainer"]["_trainer"]["optimizer"],
        "optimizer",
    )
    assert resumed["trainer"]["data"]["train"]["batches"] == 4
    # the checkpoint of iteration 1 is the same file in both runs, but for the time stamps
    _assert_same_tensors(
        _load(whole / "model_0000001.pth")["model"], _load(killed / "model_0000001.pth")["model"]
    )


# -- the pieces --------------------------------------------------------------------------------


def _random_mapper(d):
    noise = (random.random(), float(np.random.rand()), float(torch.rand(())))
    return {"i": d["i"], "width": d["width"], "height": d["height"], "noise": noise}


# landscape and portrait images: batches of 3 leave samples waiting in the other bucket
DATASET = [{"i": i, "width": 100 + 37 * (i % 3), "height": 120} for i in range(11)]


def _sized_mapper(d):  # the dataset dicts have no size: the mapped ones do (as DatasetMapper)
    return _random_mapper({**d, "width": 100 + 37 * (d["i"] % 3), "height": 120})


def _loader(num_workers=0, seed=5, sizes_in_dataset=True):
    dataset = DATASET if sizes_in_dataset else [{"i": d["i"]} for d in DATASET]
    return ResumableTrainLoader(
        dataset,
        _random_mapper if sizes_in_dataset else _sized_mapper,
        sampler_factory=lambda s: TrainingSampler(len(DATASET), seed=s),
        total_batch_size=3,
        num_workers=num_workers,
        seed=seed,
    )


def _take(loader, n):
    return [[(d["i"], d["noise"]) for d in batch] for batch in itertools.islice(iter(loader), n)]


def test_resumable_loader_continues_with_the_next_batch_and_keeps_the_global_rng():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    full = _take(_loader(), 12)
    assert torch.equal(torch.get_rng_state(), before)  # mapping does not draw from it
    assert all(len({d["width"] > d["height"] for d in DATASET if d["i"] in [i for i, _ in b]}) == 1
               for b in full)  # fmt: skip
    first = _loader()
    head = _take(first, 5)
    state = first.state_dict()
    assert state["batches"] == 5 and state["seed"] == 5
    again = _loader(seed=99)  # the stream seed comes from the state
    again.load_state_dict(state)
    assert head + _take(again, 7) == full
    assert _take(_loader(num_workers=2), 12) == full  # workers change nothing
    with_workers = _loader(num_workers=2)
    with_workers.load_state_dict(state)
    assert _take(with_workers, 7) == full[5:]
    assert _take(_loader(seed=6), 12) != full
    # aspect ratios known only after mapping: the replay maps what it needs, same batches
    unsized = _loader(sizes_in_dataset=False)
    unsized.load_state_dict(state)
    assert _take(unsized, 7) == full[5:]


def test_seeded_and_preserved_rng():
    torch.manual_seed(0)
    state = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with seeded_rng(derived_seed(1, 2)):
        a = (random.random(), np.random.rand(), torch.rand(()))
    with preserved_rng():
        with seeded_rng(derived_seed(1, 2)):
            b = (random.random(), np.random.rand(), torch.rand(()))
        torch.rand(3), np.random.rand(), random.random()
    assert a == b and derived_seed(1, 2) != derived_seed(2, 1)
    assert torch.equal(torch.get_rng_state(), state[0])
    assert (np.random.get_state()[1] == state[1]).all() and random.getstate() == state[2]


def test_drop_metrics_rows(tmp_path):
    path = tmp_path / "metrics.json"
    assert training.drop_metrics_rows(str(path), 3) == 0  # no file: nothing to do
    rows = [{"iteration": i, "loss": i / 2} for i in range(5)]
    lines = [json.dumps(r) for r in rows[:3]] + ['{"eval_only": true}'] + [json.dumps(rows[3])]
    path.write_text("\n".join(lines) + "\n" + '{"iteration": 4, "lo')  # last line cut off
    with open(path, "a") as appender:  # as Detectron2's JSONWriter holds it
        assert training.drop_metrics_rows(str(path), 2) == 3
        appender.write(json.dumps(rows[2]) + "\n")
    kept = path.read_text().splitlines()
    assert kept == lines[:2] + ['{"eval_only": true}', json.dumps(rows[2])]
    assert training.drop_metrics_rows(str(path), 10) == 0


def test_lazyconfig_run_resumed_from_an_earlier_checkpoint_ends_with_the_same_weights(tmp_path):
    from crbp_d2.rfpn.train import trainer_lazy as training_lazy

    from crbp_d2.cli import lazyconfig_train_net

    smoke = str(REPO / "configs" / "lazy" / "quick" / "R-FPN-R50-CRBP-synthetic-test.py")
    out = tmp_path / "lazy"
    argv = [
        "--config-file",
        smoke,
        f"train.output_dir={out}",
        "train.max_iter=4",
        "train.checkpointer.period=2",
        "dataloader.train.total_batch_size=2",
        "dataloader.evaluator=null",
    ]  # fmt: skip (no evaluation)
    training_lazy.train_or_evaluate_lazy(lazyconfig_train_net.parse_args(argv))
    expected = _load(out / "model_final.pth")
    rows = (out / "metrics.json").read_text()
    assert expected["resume"]["data"]["train"]["batches"] == 4
    # as if killed after iteration 3, with the checkpoint of iteration 1 the last one saved
    (out / "last_checkpoint").write_text("model_0000001.pth")
    (out / "model_final.pth").unlink()
    training_lazy.train_or_evaluate_lazy(lazyconfig_train_net.parse_args(argv + ["--resume"]))
    resumed = _load(out / "model_final.pth")
    _assert_same_tensors(expected["model"], resumed["model"], "model")
    _assert_same_tensors(expected["trainer"]["optimizer"], resumed["trainer"]["optimizer"])
    iterations = [json.loads(line)["iteration"] for line in rows.splitlines()]
    assert _iterations(out) == iterations == [0, 1, 2, 3]


def _capture_detectron2_log(caplog):
    log = logging.getLogger("detectron2")  # setup_logger stops it from propagating
    log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="detectron2")
    return log


def test_an_old_checkpoint_continues_the_data_and_says_what_it_cannot_restore(tmp_path, caplog):
    cfg = training.build_config(train_net.parse_args(_args(tmp_path)))
    trainer = training.Trainer(cfg)
    state = trainer.state_dict()
    assert {"_trainer", "rng", "data"} <= set(state)
    assert state["data"]["train"]["batches"] == 0
    log = _capture_detectron2_log(caplog)
    try:
        trainer.load_state_dict({"iteration": 5, "hooks": state["hooks"]})  # as saved before
    finally:
        log.removeHandler(caplog.handler)
    assert trainer.iter == 5 and trainer.data_loader.batches == 6  # the stream goes on
    for words in ("no optimizer state", "no data-loader position", "no random-generator states"):
        assert words in caplog.text


def test_rng_states_of_several_processes_are_gathered_and_each_restores_its_own(
    monkeypatch, caplog
):
    from detectron2.utils import comm

    from crbp_d2.utils.rng import get_rng_state

    torch.manual_seed(7)
    other = get_rng_state()
    torch.manual_seed(8)
    mine = get_rng_state()
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    monkeypatch.setattr(comm, "all_gather", lambda state: [other, state])

    class FakeTrainer:
        iter, max_iter = 3, 10

    trainer = FakeTrainer()
    hook = training._GatherRNGStates(period=2)
    hook.trainer = trainer
    hook.after_step()  # iteration 3: the checkpointer saves (4 % 2 == 0)
    states = training.rng_states(trainer)
    assert len(states) == 2 and torch.equal(states[1]["torch"], mine["torch"])
    torch.manual_seed(9)
    training.restore_rng_states(states)  # rank 1 takes its own
    assert torch.equal(torch.get_rng_state(), mine["torch"])
    trainer.iter = 4  # not gathered at this iteration: only this process's
    assert len(training.rng_states(trainer)) == 1
    log = _capture_detectron2_log(caplog)
    try:
        torch.manual_seed(9)
        before = torch.get_rng_state()
        training.restore_rng_states([other])  # saved by 1 process, now 2: not restored
    finally:
        log.removeHandler(caplog.handler)
    assert torch.equal(torch.get_rng_state(), before)
    assert "random-generator states of 1 process(es), this run has 2" in caplog.text


def test_two_process_cpu_run_resumed_from_an_earlier_checkpoint_ends_with_the_same_weights(
    tmp_path,
):
    """``--num-gpus 2`` on CPU (gloo): each process's random state is in the checkpoint (gathered
    at the checkpoint iterations) and each one restores its own."""
    argv = ["--num-gpus", "2", "--dist-url", "auto", *_args(tmp_path), "MODEL.DEVICE", "cpu"]
    assert train_net.main(argv) == 0
    expected = _load(tmp_path / "model_final.pth")
    states = expected["trainer"]["rng"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    # as if killed after iteration 3, with the checkpoint of iteration 1 the last one saved
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    (tmp_path / "model_final.pth").unlink()
    assert train_net.main(argv + ["--resume"]) == 0
    resumed = _load(tmp_path / "model_final.pth")
    _assert_same_tensors(expected["model"], resumed["model"], "model")
    _assert_same_tensors(
        expected["trainer"]["_trainer"]["optimizer"], resumed["trainer"]["_trainer"]["optimizer"]
    )
