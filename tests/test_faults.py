"""The fault suite: bad inputs and faults on both front-ends, each answered by one line naming the
bad thing, with nothing already written lost (docs/faults.md is the table of what the user sees).

Fast by default; the cases that start processes and kill them are marked slow."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch

from crbp_d2.utils.safe_load import CheckpointReadError, load_pickle_weights, load_torch_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _RunsCode:
    """Unpickling this creates ``marker`` (what a crafted checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(tmp_path, name: str, pickler: str = "torch"):
    marker = tmp_path / "code_ran"
    path = tmp_path / name
    payload = {"model": {"w": _RunsCode(str(marker))}, "config": "x", "__author__": "x"}
    if pickler == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    return path, marker


def _pathfinder_argv(tmp_path, *extra: str) -> list:
    """A tiny Pathfinder config (few small on-the-fly images) and ``extra`` arguments."""
    config = tmp_path / "pf.yaml"
    config.write_text(
        f"OUTPUT_DIR: {tmp_path / 'run'}\nMODEL: {{CHANNELS: 4, RECURRENT: {{KERNEL_SIZE: 3}}}}\n"
        "DATA: {SOURCE: memory, TRAIN_SIZE: 4, TEST_SIZE: 4, IMAGE_SIZE: 32, CANVAS_SIZE: 128, "
        "TRAIN_LENGTH: 9, TEST_LENGTH: 9, GENERATOR: {padding: 10, num_distractors: 3}}\n"
        "SOLVER: {BATCH_SIZE: 4, EPOCHS: 1}\nTEST: {BATCH_SIZE: 4}\n"
    )
    return ["--config-file", str(config), "--no-progress", *extra]


_PROGRAM_LINE = re.compile(r"^[\w.]+: (error|warning|interrupted)")


def _one_line(err: str) -> str:
    """The one line of ``err`` that reports the fault (``PROG: error: ...`` / ``warning``), and no
    traceback (other lines, e.g. torch's own import-time log lines, are not the program's)."""
    # (a handler that an earlier test bound to a closed capture prints "--- Logging error ---"
    # with a traceback of logging itself: not the program's)
    assert "Traceback" not in err or "--- Logging error ---" in err, err
    lines = [line for line in err.splitlines() if _PROGRAM_LINE.match(line)]
    assert len(lines) == 1, err
    return lines[0]


# -- 1. checkpoints are data, never code ------------------------------------------------------


@pytest.mark.parametrize("pickler", ["torch", "pickle"])
def test_a_crafted_checkpoint_runs_no_code_and_is_refused_naming_the_file(tmp_path, pickler):
    path, marker = _crafted(tmp_path, "evil.pth" if pickler == "torch" else "evil.pkl", pickler)
    load = load_torch_file if pickler == "torch" else load_pickle_weights
    with pytest.raises(CheckpointReadError, match="refused checkpoint .*evil") as info:
        load(str(path))
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_pathfinder_eval_only_refuses_a_crafted_checkpoint(tmp_path, capsys):
    from crbp_d2.cli import train_pathfinder

    path, marker = _crafted(tmp_path, "evil.pth")
    argv = _pathfinder_argv(tmp_path, "--eval-only", "--weights", str(path))
    assert train_pathfinder.main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert "refused checkpoint" in line and str(path) in line
    assert not marker.exists()


def test_pathfinder_steps_refuses_a_crafted_checkpoint(tmp_path, capsys):
    from crbp_d2.cli import pathfinder_steps

    path, marker = _crafted(tmp_path, "evil.pth")
    argv = ["--checkpoints", f"a={path}", "--out", str(tmp_path / "out"), "--max-steps", "2"]
    assert pathfinder_steps.main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert "refused checkpoint" in line and str(path) in line
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_detectron2_checkpointer_refuses_a_crafted_checkpoint(tmp_path, suffix):
    from crbp_d2.rfpn.checkpoint import CheckpointFileError, RFPNCheckpointer

    pickler = "pickle" if suffix == ".pkl" else "torch"
    path, marker = _crafted(tmp_path, "evil" + suffix, pickler)
    checkpointer = RFPNCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))
    with pytest.raises(CheckpointFileError, match="refused checkpoint") as info:
        checkpointer.load(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_detectron2_checkpointer_still_reads_model_zoo_pickles(tmp_path):
    from crbp_d2.rfpn.checkpoint import RFPNCheckpointer

    import numpy as np

    model = torch.nn.Linear(2, 3)
    weights = {"weight": np.full((3, 2), 0.5, np.float32), "bias": np.arange(3, dtype=np.float32)}
    path = tmp_path / "zoo.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "test"}, f, protocol=2)
    RFPNCheckpointer(model, save_dir=str(tmp_path)).load(str(path))
    assert torch.equal(model.weight, torch.full((3, 2), 0.5))
    assert torch.equal(model.bias, torch.arange(3.0))


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint\n", bytes(range(256)) * 4, b"PK\x03\x04" + bytes(64)],
    ids=["empty", "text", "random", "cut-zip"],
)
def test_garbage_weights_are_one_line_on_the_pathfinder_side(tmp_path, capsys, content):
    from crbp_d2.cli import train_pathfinder

    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    argv = _pathfinder_argv(tmp_path, "--eval-only", "--weights", str(path))
    assert train_pathfinder.main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"cannot read checkpoint {path}" in line


# -- 2. one run per folder --------------------------------------------------------------------

D2_CONFIG = os.path.join(ROOT, "configs/quick/R-FPN-R50-CRBP-synthetic-test.yaml")
LAZY_CONFIG = os.path.join(ROOT, "configs/lazy/quick/R-FPN-R50-CRBP-synthetic-test.py")


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    from crbp_d2.utils.run_dir import LOCK_NAME, RunDirBusyError, RunDirLock

    with RunDirLock(str(tmp_path)):
        holder = (tmp_path / LOCK_NAME).read_text()
        assert f"pid={os.getpid()}" in holder and "host=" in holder
        with pytest.raises(RunDirBusyError, match=f"in use by another run \\(pid={os.getpid()}"):
            RunDirLock(str(tmp_path)).acquire()
    assert not (tmp_path / LOCK_NAME).exists()  # released
    RunDirLock(str(tmp_path)).acquire().release()  # and free again


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    from crbp_d2.utils.run_dir import LOCK_NAME, RunDirLock

    (tmp_path / LOCK_NAME).write_text("pid=999999999 host=elsewhere since=2020-01-01T00:00:00\n")
    lock = RunDirLock(str(tmp_path), "prog").acquire()
    try:
        line = _one_line(capsys.readouterr().err)
        assert "taking over the lock of a run that is no longer running (pid=999999999" in line
        assert f"pid={os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
    finally:
        lock.release()


def test_pathfinder_training_into_a_folder_in_use_is_refused(tmp_path, capsys):
    from crbp_d2.cli import train_pathfinder
    from crbp_d2.utils.run_dir import RunDirLock

    with RunDirLock(str(tmp_path / "run")):  # another run holds it
        assert train_pathfinder.main(_pathfinder_argv(tmp_path)) == 2
    line = _one_line(capsys.readouterr().err)
    assert "is in use by another run" in line and str(tmp_path / "run") in line
    assert not (tmp_path / "run" / "last.pth").exists()


def _d2_main(program, argv):
    with pytest.raises(SystemExit) as info:
        program.main(argv)
    return info.value.code


@pytest.mark.parametrize("program_name", ["train_net", "lazyconfig_train_net"])
def test_detectron2_training_into_a_folder_holding_a_run_is_refused(tmp_path, capsys, program_name):
    pytest.importorskip("detectron2")
    from crbp_d2.cli import lazyconfig_train_net, train_net

    run = tmp_path / "run"
    run.mkdir()
    (run / "model_final.pth").write_bytes(b"old weights")
    (run / "metrics.json").write_text('{"iteration": 9}\n')
    if program_name == "train_net":
        program, argv = train_net, ["--config-file", D2_CONFIG, "OUTPUT_DIR", str(run)]
    else:
        program = lazyconfig_train_net
        argv = ["--config-file", LAZY_CONFIG, f"train.output_dir={run}"]
    assert _d2_main(program, argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"OUTPUT_DIR '{run}' holds a run (metrics.json, model_final.pth)" in line
    assert "--resume" in line and "--overwrite" in line
    assert (run / "model_final.pth").read_bytes() == b"old weights"  # nothing lost
    assert (run / "metrics.json").read_text() == '{"iteration": 9}\n'
    # --resume where there is nothing to resume (a typo in the folder) is refused too
    empty = str(tmp_path / "typo")
    if program_name == "train_net":
        argv = ["--config-file", D2_CONFIG, "--resume", "OUTPUT_DIR", empty]
    else:
        argv = ["--config-file", LAZY_CONFIG, "--resume", f"train.output_dir={empty}"]
    assert _d2_main(program, argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert "holds no run to continue" in line and "--resume-or-start" in line


def test_detectron2_overwrite_removes_the_old_runs_files_only(tmp_path):
    import argparse

    from crbp_d2.cli._common import run_dir_guard

    for name in ("model_0000004.pth", "model_final.pth", "last_checkpoint", "metrics.json"):
        (tmp_path / name).write_text("old")
    (tmp_path / "events.out.tfevents.1.host").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    args = argparse.Namespace(eval_only=False, resume=False, overwrite=True)
    with run_dir_guard("prog", str(tmp_path), args):
        assert sorted(os.listdir(tmp_path)) == [".run.lock", "notes.txt"]
    assert os.listdir(tmp_path) == ["notes.txt"]
    fresh = argparse.Namespace(eval_only=False, resume=True, overwrite=False, resume_or_start=True)
    with run_dir_guard("prog", str(tmp_path / "new"), fresh):  # nothing to resume: starts
        pass


# -- 3. no orphans ----------------------------------------------------------------------------

_LAUNCHER = """
import os, sys, time
sys.path.insert(0, {root!r})
from crbp_d2.rfpn.train.launch import launch

def rank_sleeps(folder):
    import torch.distributed as dist
    path = os.path.join(folder, f"rank{{dist.get_rank()}}.pid")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    while True:  # a training that would run for hours
        time.sleep(0.1)

if __name__ == "__main__":
    launch(rank_sleeps, 2, dist_url="auto", device="cpu", args=({folder!r},))
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _wait_for(condition, timeout: float) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_cpu_ranks_stop_within_seconds_when_the_launcher_is_killed(tmp_path):
    """``--num-gpus 2`` on the CPU (crbp_d2.rfpn.train.launch): kill -9 of the launcher ends both
    ranks (about 10-20 s on a shared machine, mostly the workers' imports)."""
    import signal
    import subprocess
    import sys

    pytest.importorskip("detectron2")
    script = tmp_path / "launcher.py"
    script.write_text(_LAUNCHER.format(root=ROOT, folder=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # As `tools/train_net.py ... &` from a script starts it: SIGINT ignored (inherited by the
    # ranks), so torch's own parent-death SIGINT does not stop them.
    launcher = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        cwd=str(tmp_path),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        pid_files = [tmp_path / f"rank{r}.pid" for r in range(2)]
        assert _wait_for(lambda: all(p.exists() for p in pid_files), 120), "ranks did not start"
        ranks = [int(p.read_text()) for p in pid_files]
        assert all(_alive(pid) for pid in ranks)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert _wait_for(lambda: not any(_alive(pid) for pid in ranks), 5), "orphaned ranks"
    finally:
        launcher.kill()
        for p in tmp_path.glob("rank*.pid"):
            try:
                os.kill(int(p.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def test_a_rendezvous_port_in_use_is_one_line(tmp_path):
    import socket

    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.train.launch import DistUrlError, launch

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        url = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(DistUrlError, match=f"--dist-url {url}: port .* is in use"):
            launch(print, 2, dist_url=url, device="cpu")


def _children(parent: int):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().split(")")[-1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == parent and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_pathfinder_ranks_stop_within_seconds_when_torchrun_is_killed(tmp_path):
    """The README's multi-process Pathfinder command (torchrun, gloo on the CPU): kill -9 of
    torchrun ends both ranks (they would otherwise train on as orphans)."""
    import signal
    import subprocess
    import sys

    argv = _pathfinder_argv(tmp_path, "SOLVER.EPOCHS", "100000", "NUM_THREADS", "1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += [os.path.join(ROOT, "tools", "train_pathfinder.py"), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    torchrun = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    ranks = []
    try:
        log = tmp_path / "run" / "train_log.csv"
        assert _wait_for(lambda: log.exists() and len(_children(torchrun.pid)) == 2, 120)
        ranks = _children(torchrun.pid)
        torchrun.send_signal(signal.SIGKILL)
        torchrun.wait()
        assert _wait_for(lambda: not any(_alive(pid) for pid in ranks), 8), "orphaned ranks"
    finally:
        torchrun.kill()
        for pid in ranks:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- 4. evaluation loads what it says ---------------------------------------------------------


def _d2_eval_argv(output, *extra):
    return ["--config-file", D2_CONFIG, "--eval-only", *extra, "OUTPUT_DIR", str(output)]


def test_eval_only_refuses_a_checkpoint_that_leaves_the_model_mostly_random(
    tmp_path, capsys, monkeypatch
):
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.train import trainer as training

    from crbp_d2.cli import train_net

    evaluated = []
    monkeypatch.setattr(
        training.Trainer, "test", classmethod(lambda *a, **k: evaluated.append(1) or {})
    )
    other = tmp_path / "other_model.pth"  # e.g. an R-50 checkpoint for an R-18 recipe
    torch.save({"model": {"backbone.other.conv.weight": torch.zeros(3, 3)}}, other)
    argv = _d2_eval_argv(tmp_path / "eval", "MODEL.WEIGHTS", str(other))
    assert _d2_main(train_net, argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{other} sets 0 of the model's" in line and "random initialisation" in line
    assert "backbone." in line and "--allow-partial-weights" in line
    assert not evaluated
    # asked for: evaluated, with a warning
    assert train_net.main(argv + ["--allow-partial-weights"]) == 0
    assert evaluated


def test_eval_only_resume_evaluates_the_folders_last_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.checkpoint import RFPNCheckpointer
    from crbp_d2.rfpn.train import trainer as training

    from crbp_d2.cli import train_net

    run = tmp_path / "run"
    cfg = training.build_config(train_net.parse_args(_d2_eval_argv(run, "--random-weights")))
    model = training.Trainer.build_model(cfg)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(0.25)
    run.mkdir()
    RFPNCheckpointer(model, save_dir=str(run)).save("model_0000003")  # + last_checkpoint
    seen = {}

    def fake_test(cls, cfg, model, evaluators=None):
        seen["values"] = {float(p.flatten()[0]) for p in model.parameters()}
        return {}

    monkeypatch.setattr(training.Trainer, "test", classmethod(fake_test))
    assert train_net.main(_d2_eval_argv(run, "--resume")) == 0  # no MODEL.WEIGHTS needed
    assert seen["values"] == {0.25}
    with pytest.raises(SystemExit):  # nothing there to evaluate: one line
        train_net.main(_d2_eval_argv(tmp_path / "typo", "--resume"))


# -- 5. logs and JSON stay valid, labels say their step, evaluation reads no training data ----


def test_pathfinder_train_log_has_no_duplicate_rows_after_a_resume(tmp_path):
    import csv

    from helpers import LineDataset, tiny_cfg

    from crbp_d2.pathfinder.train.loop import Trainer

    one = tiny_cfg(tmp_path, "SOLVER.EPOCHS", 1)
    first = Trainer(one, LineDataset(8), LineDataset(4, seed=1), progress=False)
    first.train()  # last.pth after epoch 1
    log_path = os.path.join(one.OUTPUT_DIR, "train_log.csv")
    with open(log_path) as f:
        header = f.readline().strip().split(",")
    with open(log_path, "a", newline="") as f:  # epoch 2's rows of a run killed before last.pth
        writer = csv.DictWriter(f, header)
        for step in (1, 2):
            writer.writerow({"epoch": 2, "iteration": first.iteration + step, "loss": 9.0})
    two = tiny_cfg(tmp_path, "SOLVER.EPOCHS", 2)  # the same OUTPUT_DIR
    resumed = Trainer(two, LineDataset(8), LineDataset(4, seed=1), resume=True, progress=False)
    resumed.train()
    with open(log_path) as f:
        iterations = [int(r["iteration"]) for r in csv.DictReader(f)]
    assert iterations == sorted(set(iterations)), iterations  # each iteration once, in order
    assert iterations[-1] == resumed.iteration


def test_json_records_write_nan_as_null(tmp_path):
    import json

    from crbp_d2.utils.io import atomic_write_json

    path = tmp_path / "metrics.json"
    atomic_write_json(
        {"best": {"iou": float("nan"), "f1": 0.5}, "curve": [1.0, float("inf")]}, path
    )

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {"best": {"iou": None, "f1": 0.5}, "curve": [1.0, None]}


def test_pathfinder_steps_labels_say_the_step_they_report():
    from crbp_d2.pathfinder.evaluation.reports import steps_summary

    rows = [{"iou": v} for v in (0.1, 0.4, 0.3, 0.2)]  # t = 0..3
    line = steps_summary(rows, train_steps=10, max_steps=3)
    assert "IoU@N=10" not in line and "N=10 is past --max-steps 3" in line
    assert "best 0.4000 (t=1)" in line and "IoU@3 0.2000" in line
    assert steps_summary(rows, train_steps=2, max_steps=3).startswith("IoU@N=2 0.3000")


def test_eval_only_does_not_need_the_training_split(tmp_path):
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.train import trainer as training

    from crbp_d2.cli import train_net

    weights = tmp_path / "w.pth"
    torch.save({"model": {}}, weights)
    # a training split whose files are not there (COCO's train2017 not downloaded)
    opts = [
        "DATASETS.TRAIN",
        "('coco_2017_train_panoptic_separated',)",
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    opts += ["MODEL.WEIGHTS", str(weights)]
    argv = ["--config-file", D2_CONFIG, *opts]
    with pytest.raises((FileNotFoundError, ValueError)):
        training.build_config(train_net.parse_args(argv))  # training needs it
    training.build_config(train_net.parse_args(argv + ["--eval-only"]))  # evaluation does not


# -- 6. one line for every bad input ----------------------------------------------------------


def test_a_detectron2_checkpoint_is_never_half_written(tmp_path, monkeypatch):
    """Disk full in the middle of a checkpoint: one line naming it; the previous checkpoint and
    ``last_checkpoint`` are intact and no partial file is left."""
    import errno

    from crbp_d2.rfpn.checkpoint import CheckpointWriteError, RFPNCheckpointer

    model = torch.nn.Linear(2, 2)
    checkpointer = RFPNCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()
    real_save = torch.save

    def disk_full(obj, stream, *args, **kwargs):
        real_save(obj, stream, *args, **kwargs)  # some bytes reach the file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError) as info:
        checkpointer.save("model_0000002")
    message = str(info.value)
    assert "\n" not in message and "model_0000002.pth" in message and "No space left" in message
    assert "model_0000001.pth is intact" in message
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_ctrl_c_stops_cleanly_naming_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from crbp_d2.cli import train_pathfinder

    def interrupted(args, cfg):
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        torch.save({}, os.path.join(cfg.OUTPUT_DIR, "last.pth"))
        raise KeyboardInterrupt

    monkeypatch.setattr(train_pathfinder, "_run", interrupted)
    with pytest.raises(SystemExit) as info:
        train_pathfinder.main(_pathfinder_argv(tmp_path))
    assert info.value.code == 130
    line = _one_line(capsys.readouterr().err)
    assert "interrupted (Ctrl-C); the last checkpoint is" in line
    assert str(tmp_path / "run" / "last.pth") in line and "--resume" in line
    assert not (tmp_path / "run" / ".run.lock").exists()  # the folder's lock is released


def test_ctrl_c_in_train_net_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    pytest.importorskip("detectron2")
    from crbp_d2.cli import train_net

    (tmp_path / "model_0000009.pth").write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_net, "launch", interrupted)
    argv = ["--config-file", D2_CONFIG, "--resume", "OUTPUT_DIR", str(tmp_path)]
    assert _d2_main(train_net, argv) == 130
    line = _one_line(capsys.readouterr().err)
    assert f"the last checkpoint is {tmp_path / 'model_0000009.pth'}" in line


@pytest.mark.parametrize("count", ["0", "-1"])
def test_num_gpus_below_one_is_refused(capsys, count):
    pytest.importorskip("detectron2")
    from crbp_d2.cli import lazyconfig_train_net, train_net

    for program in (train_net, lazyconfig_train_net):
        with pytest.raises(SystemExit) as info:
            program.parse_args(["--config-file", "x", "--num-gpus", count])
        assert info.value.code == 2
        assert "--num-gpus must be >= 1" in _one_line(capsys.readouterr().err)


def test_yaml_syntax_errors_are_one_line_naming_file_and_line(tmp_path, capsys):
    pytest.importorskip("detectron2")
    from crbp_d2.cli import train_net, train_pathfinder

    bad = tmp_path / "bad.yaml"
    bad.write_text('OUTPUT_DIR: "x\nMODEL:\n  DEVICE: cpu\n')
    assert train_pathfinder.main(["--config-file", str(bad)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"cannot parse {bad}: line" in line and "a YAML syntax error" in line
    assert _d2_main(train_net, ["--config-file", str(bad)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"cannot parse {bad}: line" in line and "a YAML syntax error" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_pathfinder_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    from crbp_d2.cli import train_pathfinder

    assert train_pathfinder.main(_pathfinder_argv(tmp_path, "DEVICE", "cuda")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "DEVICE 'cuda' asked for but CUDA is not available" in line


def test_detectron2_output_dir_faults_are_one_line(tmp_path, capsys):
    pytest.importorskip("detectron2")
    from crbp_d2.cli import train_net

    taken = tmp_path / "a_file"
    taken.write_text("mine")
    argv = ["--config-file", D2_CONFIG, "OUTPUT_DIR", str(taken)]
    assert _d2_main(train_net, argv) == 2
    assert f"OUTPUT_DIR '{taken}' is a file, not a folder" in _one_line(capsys.readouterr().err)
    assert taken.read_text() == "mine"
    below = str(taken / "run")
    assert _d2_main(train_net, ["--config-file", D2_CONFIG, "OUTPUT_DIR", below]) == 2
    assert f"{taken} is a file" in _one_line(capsys.readouterr().err)


def test_detectron2_programs_describe_themselves_in_help(capsys):
    pytest.importorskip("detectron2")
    from crbp_d2.cli import lazyconfig_train_net, train_net

    for program, expected in ((train_net, "KEY VALUE"), (lazyconfig_train_net, "key=value")):
        with pytest.raises(SystemExit):
            program.parse_args(["--help"])
        out = capsys.readouterr().out
        assert "Train and evaluate Panoptic FPN / R-FPN" in out and expected in out
        assert "--overwrite" in out and "--allow-partial-weights" in out
        assert "/path/to/weight.pth" not in out  # not Detectron2's generic yacs examples


def test_counts_and_ranges_are_checked_in_one_parser():
    from crbp_d2.utils.counts import parse_counts

    assert parse_counts("1-3,10,2") == [1, 2, 3, 10]
    with pytest.raises(ValueError, match=r"the range '5-1' is reversed \(write 1-5\)"):
        parse_counts("5-1")
    with pytest.raises(ValueError, match="must be >= 1"):
        parse_counts("0-2")
    with pytest.raises(ValueError, match="expected integers or ranges"):
        parse_counts("3-x")
    assert parse_counts("0,4", minimum=0) == [0, 4]


@pytest.mark.parametrize(
    "tool, option",
    [
        ("pathfinder_steps", "--max-steps"),
        ("pathfinder_state_space", "--images"),
        ("pathfinder_generalization", "--lengths"),
        ("pathfinder_steps", "--batch-size"),
    ],
)
def test_negative_counts_in_the_pathfinder_analysis_tools_are_one_line(capsys, tool, option):
    import importlib

    module = importlib.import_module(f"crbp_d2.cli.{tool}")
    with pytest.raises(SystemExit) as info:
        module.main(["--checkpoints", "a=x.pth", "--out", "o", option, "-3"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be an integer >= " in err and "got '-3'" in err


def test_step_counts_above_a_sane_bound_are_warned(monkeypatch):
    from crbp_d2.recurrent import engine_config_defaults, spec
    from crbp_d2.recurrent.spec import spec_from_node

    monkeypatch.setattr(spec, "_WARNED_STEP_COUNTS", set())

    node = engine_config_defaults()
    node["TIMESTEPS"] = 1_000_000
    with pytest.warns(UserWarning, match=r"RECURRENT.TIMESTEPS = 1000000 is above 10,000"):
        spec_from_node(node)


def test_a_bad_training_image_is_named(capsys):
    """A truncated JPEG of the user's own COCO data: the error names the image file (also when
    raised in a DataLoader worker, whose message carries the worker's traceback)."""
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.data.resumable import DatasetItemError, _SeededMap  # (before detectron2.data)

    from crbp_d2.cli._common import report_input_error

    from detectron2.data.common import DatasetFromList  # isort: skip

    def mapper(item):
        raise OSError("image file is truncated (12 bytes not processed)")

    items = DatasetFromList([{"file_name": "/data/mine/000042.jpg"}], copy=False, serialize=False)
    with pytest.raises(DatasetItemError, match="image /data/mine/000042.jpg: OSError: image file"):
        _SeededMap(items, mapper)(seed=0, position=0, index=0)
    in_worker = DatasetItemError(
        "Caught DatasetItemError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in f\ncrbp_d2.data.resumable.DatasetItemError: cannot '
        "load training item 0 of the dataset, image /data/mine/000042.jpg: OSError: truncated\n"
    )
    assert report_input_error("train_net.py", in_worker) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (
        "train_net.py: error: cannot load training item 0 of the dataset, image "
        "/data/mine/000042.jpg: OSError: truncated"
    )


@pytest.mark.parametrize("fault", ["unknown category", "empty"])
def test_a_users_coco_dataset_fault_names_the_annotation_file(tmp_path, fault):
    pytest.importorskip("detectron2")
    import json

    from crbp_d2.rfpn.config import get_crbp_cfg
    from crbp_d2.rfpn.data.resumable import DatasetError, build_resumable_train_loader

    from detectron2.data.datasets import register_coco_instances  # isort: skip

    images = [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 99, "bbox": [1, 1, 4, 4], "area": 16,
         "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 5]]}
    ]  # fmt: skip
    if fault == "empty":
        images, annotations = [], []
    content = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(content))
    name = f"faults_{fault.replace(' ', '_')}_{os.getpid()}_{id(tmp_path)}"
    register_coco_instances(name, {}, str(annotation_file), str(tmp_path))
    cfg = get_crbp_cfg(D2_CONFIG, ["DATASETS.TRAIN", f"('{name}',)"])
    expected = "category_id=99" if fault != "empty" else "empty"
    with pytest.raises(DatasetError, match=expected) as info:
        build_resumable_train_loader(cfg)
    assert str(annotation_file) in str(info.value) and "\n" not in str(info.value)


def test_cuda_check_without_torch_is_one_line(tmp_path):
    import subprocess

    no_torch = tmp_path / "python"  # a python whose `import torch` fails
    no_torch.write_text(
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n"
    )
    no_torch.chmod(0o755)
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "tools", "cuda_check.sh"), str(tmp_path / "out")],
        env=dict(os.environ, PYTHON=str(no_torch)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert f"{no_torch} cannot import torch" in line


def test_lazyconfig_value_errors_name_the_lazy_key(tmp_path, capsys):
    pytest.importorskip("detectron2")
    from crbp_d2.cli import lazyconfig_train_net

    argv = ["--config-file", LAZY_CONFIG, f"train.output_dir={tmp_path}"]
    argv += ["model.roi_heads.mask_head.engine.TIMESTEPS=-1"]
    assert _d2_main(lazyconfig_train_net, argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert "model.roi_heads.mask_head.engine.TIMESTEPS = -1: must be an integer >= 1" in line
    assert "MODEL.ROI_MASK_HEAD" not in line


# -- the checkpoints written before the RNG-state change --------------------------------------


def _old_format_pathfinder_checkpoint(tmp_path):
    """A real Pathfinder trainer checkpoint (one tiny epoch), re-saved as the trainer saved it
    before the RNG-state change: NumPy's raw ``np.random.get_state()`` tuple under ``rng.numpy``
    and a NumPy float in its history."""
    import numpy as np
    from helpers import LineDataset, tiny_cfg

    from crbp_d2.pathfinder.train.loop import Trainer

    cfg = tiny_cfg(tmp_path, "SOLVER.EPOCHS", 1)
    Trainer(cfg, LineDataset(8), LineDataset(4, seed=1), progress=False).train()
    state = torch.load(os.path.join(cfg.OUTPUT_DIR, "last.pth"), weights_only=True)
    np.random.seed(1234)
    np.random.random(7)  # a state part-way through the stream
    state["rng"]["numpy"] = np.random.get_state()
    state["history"] = [{"iou": np.float64(0.25)}]
    old = tmp_path / "old.pth"
    torch.save(state, old)
    return cfg, old, state


def test_an_old_pathfinder_checkpoint_is_refused_naming_the_migration_tool(tmp_path):
    cfg, old, _ = _old_format_pathfinder_checkpoint(tmp_path)
    with pytest.raises(CheckpointReadError) as info:
        load_torch_file(str(old))
    message = str(info.value)
    assert "\n" not in message and str(old) in message
    assert "tools/migrate_pathfinder_checkpoint.py OLD.pth NEW.pth --trust" in message
    crafted, _ = _crafted(tmp_path, "evil.pth")  # code, not NumPy: no advice to trust it
    with pytest.raises(CheckpointReadError) as info:
        load_torch_file(str(crafted))
    assert "--trust" not in str(info.value)


def test_the_migration_tool_converts_an_old_pathfinder_checkpoint(tmp_path, capsys):
    import numpy as np
    from helpers import LineDataset

    from crbp_d2.cli import migrate_pathfinder_checkpoint as tool
    from crbp_d2.pathfinder.train.loop import Trainer

    cfg, old, state = _old_format_pathfinder_checkpoint(tmp_path)
    before = old.read_bytes()
    new = tmp_path / "new.pth"
    assert tool.main([str(old), str(new)]) == 2  # no --trust: refused, nothing written
    line = _one_line(capsys.readouterr().err)
    assert "--trust" in line and str(old) in line and not new.exists()
    assert tool.main([str(old), str(old), "--trust"]) == 2  # never over the input unless asked
    errors = [x for x in capsys.readouterr().err.splitlines() if ": error: " in x]
    assert len(errors) == 1 and "is the input file: pass --overwrite" in errors[0]
    assert old.read_bytes() == before

    assert tool.main([str(old), str(new), "--trust"]) == 0
    err = capsys.readouterr().err
    assert "warning: reading" in err and "weights_only=False" in err
    assert old.read_bytes() == before  # the input is kept
    migrated = load_torch_file(str(new))  # now read as data only
    assert migrated["history"] == [{"iou": 0.25}]
    assert migrated["model"].keys() == state["model"].keys()
    assert all(torch.equal(migrated["model"][k], v) for k, v in state["model"].items())
    # the resumed trainer restores the very NumPy state the old checkpoint held
    trainer = Trainer(cfg, LineDataset(8), LineDataset(4, seed=1), progress=False)
    np.random.seed(0)
    trainer.load_checkpoint(str(new))
    restored = np.random.get_state()
    assert restored[0] == state["rng"]["numpy"][0] and restored[2] == state["rng"]["numpy"][2]
    assert np.array_equal(restored[1], state["rng"]["numpy"][1])
    assert tool.main([str(old), str(new), "--trust"]) == 2  # an existing NEW needs --overwrite
    assert tool.main([str(old), str(new), "--trust", "--overwrite"]) == 0


def _step_count_warnings(record) -> list:
    return [str(w.message) for w in record if "is above 10,000 (a typo?)" in str(w.message)]


@pytest.mark.parametrize("front_end", ["pathfinder", "detectron2"])
def test_a_step_count_above_the_bound_is_warned_once_on_each_front_end(monkeypatch, front_end):
    """The config is read more than once (checked, then the model built): one warning, naming
    the key and the bound."""
    import warnings

    from crbp_d2.recurrent import spec

    monkeypatch.setattr(spec, "_WARNED_STEP_COUNTS", set())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if front_end == "pathfinder":
            from crbp_d2.pathfinder.config import load_config
            from crbp_d2.pathfinder.modeling import build_model

            cfg = load_config(
                overrides=["MODEL.CHANNELS", "4", "MODEL.RECURRENT.TIMESTEPS", "1000000"]
            )
            build_model(cfg)
            key = "MODEL.RECURRENT.TIMESTEPS"
        else:
            pytest.importorskip("detectron2")
            from crbp_d2.rfpn.config import get_crbp_cfg
            from crbp_d2.rfpn.modeling.recurrent_mask_head import build_recurrent_engine

            cfg = get_crbp_cfg(D2_CONFIG, ["MODEL.ROI_MASK_HEAD.RECURRENT.TIMESTEPS", "1000000"])
            build_recurrent_engine(cfg, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM)
            key = "MODEL.ROI_MASK_HEAD.RECURRENT.TIMESTEPS"
    messages = _step_count_warnings(record)
    assert len(messages) == 1, messages
    assert f"{key} = 1000000 is above 10,000" in messages[0]


@pytest.mark.parametrize("mode", ["inference", "train-crbp", "train-bptt"])
def test_a_long_recurrence_prints_progress_lines(capsys, monkeypatch, mode):
    """Over the bound (10,000 steps; 200 here, to be fast): the engine shows the run moving on
    stderr (every tenth and at least every 30 s); runs up to the bound print nothing."""
    from helpers import LinearCell

    from crbp_d2.recurrent import RecurrentEngine
    from crbp_d2.recurrent import engine as engine_module
    from crbp_d2.recurrent.spec import EngineSpec

    SANE_MAX_STEPS = 200
    monkeypatch.setattr(engine_module, "SANE_MAX_STEPS", SANE_MAX_STEPS)
    steps = SANE_MAX_STEPS + 20
    method = "bptt" if mode == "train-bptt" else "crbp"
    engine = RecurrentEngine.from_spec(LinearCell(2), EngineSpec(steps=steps, method=method))
    x = torch.randn(1, 2, 1, 1, dtype=torch.float64)
    if mode == "inference":
        engine.eval()
        with torch.no_grad():
            engine(x)
    else:
        engine.train()
        engine(x).state.sum().backward()
    lines = [line for line in capsys.readouterr().err.splitlines() if "recurrence" in line]
    assert len(lines) >= 10, lines
    total = steps - 1 if mode == "train-crbp" else steps  # crbp: N - 1 steps without a graph
    assert lines[0].startswith(f"recurrence ({method}") and f"of {total:,} (10%)" in lines[0]
    assert f"step {total:,} of {total:,} (100%)" in lines[-1]
    engine = RecurrentEngine.from_spec(LinearCell(2), EngineSpec(steps=SANE_MAX_STEPS))
    with torch.no_grad():
        engine.eval()(x)
    assert "recurrence" not in capsys.readouterr().err


# -- the user's own COCO data: training and test datasets -------------------------------------


def _truncated_jpeg(path) -> str:
    """A 64x64 JPEG cut in half (as a failed copy leaves it)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


class _FakeTrainer:
    """What a checkpointer saves of a Detectron2 trainer: its iteration."""

    def __init__(self, iteration: int) -> None:
        self.iter = iteration

    def state_dict(self):
        return {"iteration": self.iter}

    def load_state_dict(self, state):
        self.iter = state["iteration"]


def test_a_bad_training_image_saves_the_iterations_done_before_stopping(tmp_path):
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.checkpoint import RFPNCheckpointer
    from crbp_d2.rfpn.data.resumable import DatasetItemError
    from crbp_d2.rfpn.train.trainer import save_before_stopping

    trainer = _FakeTrainer(3)  # iterations 0..2 done, iteration 3's batch cannot be loaded
    checkpointer = RFPNCheckpointer(torch.nn.Linear(2, 2), str(tmp_path), trainer=trainer)
    in_worker = DatasetItemError(
        "Caught DatasetItemError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in f\ncrbp_d2.rfpn.data.resumable.DatasetItemError: '
        "cannot load training item 7 of the dataset, image /data/mine/7.jpg: OSError: truncated\n"
    )
    error = save_before_stopping(checkpointer, trainer, in_worker, start_iter=0)
    message = str(error)
    assert isinstance(error, DatasetItemError) and "\n" not in message
    assert message.startswith("cannot load training item 7 of the dataset, image /data/mine/7.jpg")
    assert f"iterations 0..2 are saved in {tmp_path / 'model_0000002.pth'}" in message
    assert "--resume" in message and trainer.iter == 3
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    assert saved["trainer"]["iteration"] == 2  # --resume starts at iteration 3
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    # stopped at the first iteration after a resume: nothing new to save, the last one named
    error = save_before_stopping(checkpointer, _FakeTrainer(3), in_worker, start_iter=3)
    assert "no iteration was done since the checkpoint model_0000002.pth" in str(error)
    # a bad test image in the periodic evaluation (after iteration 5's step): 0..5 saved
    from crbp_d2.rfpn.data.resumable import EvaluationItemError

    trainer = _FakeTrainer(5)
    checkpointer = RFPNCheckpointer(torch.nn.Linear(2, 2), str(tmp_path), trainer=trainer)
    in_eval = EvaluationItemError("cannot load test item of val, image /data/v/1.jpg: OSError: x")
    error = save_before_stopping(checkpointer, trainer, in_eval, start_iter=0)
    assert isinstance(error, EvaluationItemError)
    assert f"iterations 0..5 are saved in {tmp_path / 'model_0000005.pth'}" in str(error)
    assert (
        torch.load(tmp_path / "model_0000005.pth", weights_only=True)["trainer"]["iteration"] == 5
    )
    # already saved by the periodic checkpointer at that iteration: named, not written again
    (tmp_path / "model_0000005.pth").unlink()
    error = save_before_stopping(checkpointer, trainer, in_eval, start_iter=0)
    assert "the evaluation stopped after iteration 5, which is saved in" in str(error)
    assert not (tmp_path / "model_0000005.pth").exists()


def test_a_truncated_training_image_stops_train_net_in_one_line_with_a_checkpoint(
    tmp_path, capsys, monkeypatch
):
    """For real: the quick recipe on a dataset whose third image is a truncated JPEG, drawn at
    iteration 2 (about 8 s on a shared 2-core machine)."""
    pytest.importorskip("detectron2")
    import copy

    from crbp_d2.rfpn.data import resumable

    from crbp_d2.cli import train_net

    from detectron2.data import DatasetCatalog, MetadataCatalog  # isort: skip
    from detectron2.data.samplers import TrainingSampler  # isort: skip

    source = "synthetic_panoptic_train_separated"
    dicts = copy.deepcopy(DatasetCatalog.get(source)[:3])
    dicts[2]["file_name"] = _truncated_jpeg(tmp_path / "bad.jpg")
    name = f"faults_truncated_{os.getpid()}_{id(tmp_path)}"
    DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
    metadata = MetadataCatalog.get(source).as_dict()
    metadata.pop("name")
    MetadataCatalog.get(name).set(**metadata)
    # a stream seed whose first two items are good images and whose third is the bad one
    seed = next(
        s
        for s in range(1000)
        if [i for _, i in zip(range(3), iter(TrainingSampler(3, seed=s)))][2] == 2
        and 2 not in [i for _, i in zip(range(2), iter(TrainingSampler(3, seed=s)))]
    )
    monkeypatch.setattr(resumable.comm, "shared_random_seed", lambda: seed)
    run = tmp_path / "run"
    argv = ["--config-file", D2_CONFIG, "OUTPUT_DIR", str(run), "DATASETS.TRAIN", f"('{name}',)"]
    argv += ["DATASETS.TEST", "()", "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "100"]
    assert _d2_main(train_net, argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"training item 2 of the dataset, image {tmp_path / 'bad.jpg'}: OSError: " in line
    assert f"iterations 0..1 are saved in {run / 'model_0000001.pth'}" in line
    saved = torch.load(run / "model_0000001.pth", weights_only=True)
    assert saved["iteration"] == 1 and saved["trainer"]["data"]["train"]["batches"] == 2


def _register_coco(tmp_path, name, images, panoptic=None):
    """A COCO instances dataset of ``images`` (dicts with file_name, width, height); with
    ``panoptic`` (segments_info per image) also a COCO panoptic JSON in the metadata."""
    import json

    from detectron2.data.datasets import register_coco_instances  # isort: skip
    from detectron2.data import MetadataCatalog  # isort: skip

    content = {
        "images": [dict(image, id=i + 1) for i, image in enumerate(images)],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1,
             "iscrowd": 0, "segmentation": [[0, 0, 1, 0, 1, 1]]}
            for i in range(len(images))
        ],
        "categories": [{"id": 1, "name": "x"}],
    }  # fmt: skip
    annotation_file = tmp_path / f"{name}.json"
    annotation_file.write_text(json.dumps(content))
    register_coco_instances(name, {}, str(annotation_file), str(tmp_path))
    if panoptic is None:
        return annotation_file, None
    panoptic_file = tmp_path / f"{name}_panoptic.json"
    panoptic_file.write_text(
        json.dumps(
            {
                "annotations": [
                    {"image_id": i + 1, "file_name": f"{i + 1}.png", "segments_info": segments}
                    for i, segments in enumerate(panoptic)
                ],
                "categories": [{"id": 1, "name": "x", "isthing": 1}],
            }
        )
    )
    MetadataCatalog.get(name).set(panoptic_json=str(panoptic_file))
    return annotation_file, panoptic_file


def _unique(tmp_path, what: str) -> str:
    return f"faults_{what}_{os.getpid()}_{id(tmp_path)}"


@pytest.mark.parametrize("split", ["training", "test"])
def test_an_image_too_small_for_the_model_is_named_at_first_load(tmp_path, split):
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.data.resumable import DatasetError, load_test_dicts, load_training_dicts

    name = _unique(tmp_path, "tiny")
    images = [{"file_name": "ok.jpg", "width": 64, "height": 48}]
    images += [{"file_name": "tiny.jpg", "width": 1, "height": 1}]
    annotation_file, _ = _register_coco(tmp_path, name, images)
    load = load_training_dicts if split == "training" else load_test_dicts
    with pytest.raises(DatasetError) as info:
        load([name])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{split} dataset(s) {name}")
    assert f"image {tmp_path / 'tiny.jpg'} is 1x1 pixels, below the 8 px" in message
    assert str(annotation_file) in message


def test_an_unknown_category_in_the_panoptic_json_is_named(tmp_path):
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.data.resumable import DatasetError, load_test_dicts

    name = _unique(tmp_path, "panoptic")
    images = [{"file_name": f"{i}.jpg", "width": 64, "height": 64} for i in (1, 2)]
    good = [{"id": 5, "category_id": 1}]
    _, panoptic_file = _register_coco(tmp_path, name, images, [good, good])
    assert len(load_test_dicts([name])) == 2  # valid: loads
    bad = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 99}]
    _, panoptic_file = _register_coco(tmp_path, name + "_bad", images, [good, bad])
    with pytest.raises(DatasetError) as info:
        load_test_dicts([name + "_bad"])
    message = str(info.value)
    assert "\n" not in message and f"panoptic annotation file {panoptic_file}" in message
    assert "segment 6 of 2.png has category_id=99" in message and "(ids 1)" in message


@pytest.mark.parametrize("config_system", ["yacs", "lazy"])
def test_a_bad_image_in_a_test_dataset_is_named(tmp_path, config_system):
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import get_crbp_cfg
    from crbp_d2.rfpn.data.resumable import EvaluationItemError
    from crbp_d2.rfpn.train.trainer import Trainer

    name = _unique(tmp_path, f"test_{config_system}")
    _truncated_jpeg(tmp_path / "bad.jpg")
    images = [{"file_name": "bad.jpg", "width": 64, "height": 64}]
    _register_coco(tmp_path, name, images)
    if config_system == "yacs":
        cfg = get_crbp_cfg(D2_CONFIG, ["DATASETS.TEST", f"('{name}',)"])
        loader = Trainer.build_test_loader(cfg, name)
    else:
        from crbp_d2.rfpn.train.trainer_lazy import _checked_test_loader_config

        from detectron2.config import LazyConfig, instantiate  # isort: skip

        cfg = LazyConfig.load(LAZY_CONFIG)
        cfg.dataloader.test.dataset.names = name
        loader = instantiate(_checked_test_loader_config(cfg.dataloader.test))
    with pytest.raises(EvaluationItemError) as info:
        next(iter(loader))
    message = str(info.value)
    assert "\n" not in message and f"cannot load test item of {name}" in message
    assert f"image {tmp_path / 'bad.jpg'}: OSError: " in message  # PIL: "Truncated File Read"


@pytest.mark.parametrize("config_system", ["yacs", "lazy"])
def test_the_test_datasets_are_checked_as_the_training_ones(tmp_path, config_system):
    """An empty test dataset (the evaluation path, --eval-only): one line naming the file."""
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import get_crbp_cfg
    from crbp_d2.rfpn.data.resumable import DatasetError
    from crbp_d2.rfpn.train.trainer import Trainer

    name = _unique(tmp_path, f"empty_{config_system}")
    annotation_file, _ = _register_coco(tmp_path, name, [])
    with pytest.raises(DatasetError) as info:
        if config_system == "yacs":
            cfg = get_crbp_cfg(D2_CONFIG, ["DATASETS.TEST", f"('{name}',)"])
            Trainer.build_test_loader(cfg, name)
        else:
            from crbp_d2.rfpn.train.trainer_lazy import _checked_test_loader_config

            from detectron2.config import LazyConfig, instantiate  # isort: skip

            cfg = LazyConfig.load(LAZY_CONFIG)
            cfg.dataloader.test.dataset.names = name
            instantiate(_checked_test_loader_config(cfg.dataloader.test))
    message = str(info.value)
    assert message.startswith(f"test dataset(s) {name}: Dataset '{name}' is empty!")
    assert str(annotation_file) in message and "\n" not in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.lr=abc", "optimizer.lr = 'abc': must be a number > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr = -0.1: must be a number > 0"),
        ("optimizer.momentum=2", "optimizer.momentum = 2: must be a number in [0, 1]"),
        ("+optimizer.foo=1", "optimizer (torch.optim.sgd.SGD): TypeError: "),
        (
            "dataloader.train.total_batch_size=0",
            "dataloader.train.total_batch_size = 0: must be an integer >= 1",
        ),
        ("dataloader.test.num_workers=-1", "dataloader.test.num_workers = -1: must be an integer"),
        ("train.checkpointer.period=0", "train.checkpointer.period = 0: must be an integer >= 1"),
        ("lr_multiplier.warmup_length=3", "lr_multiplier.warmup_length = 3: must be a number in"),
    ],
)
def test_lazyconfig_value_errors_outside_the_engine_name_the_lazy_key(
    tmp_path, capsys, override, expected
):
    """Checked before anything is built (no model, no worker): one line, the lazy key."""
    pytest.importorskip("detectron2")
    from crbp_d2.cli import lazyconfig_train_net

    argv = ["--config-file", LAZY_CONFIG, f"train.output_dir={tmp_path}", override]
    assert _d2_main(lazyconfig_train_net, argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert expected in line, line
    assert "SOLVER." not in line and "cfg." not in line
    assert not (tmp_path / "config.yaml").exists()  # refused before the run started


def test_lazyconfig_batch_size_must_divide_among_the_processes(tmp_path):
    pytest.importorskip("detectron2")
    import argparse

    from crbp_d2.rfpn.train.trainer_lazy import build_lazy_config

    args = argparse.Namespace(
        config_file=LAZY_CONFIG,
        opts=[f"train.output_dir={tmp_path}", "dataloader.train.total_batch_size=3"],
        resume=False,
        eval_only=False,
        num_gpus=2,
        num_machines=1,
    )
    with pytest.raises(ValueError, match=r"total_batch_size = 3: must be divisible .* \(2: "):
        build_lazy_config(args)
    args.num_gpus = 1
    assert build_lazy_config(args).dataloader.train.total_batch_size == 3


# -- Ctrl-C for real: SIGINT to a running training ---------------------------------------------


def _interrupt_when(command, ready, timeout: float = 120):
    """Start ``command`` (a training), wait until ``ready()``, send it SIGINT (what Ctrl-C sends
    to the foreground process) and return (exit status, stderr)."""
    import signal
    import subprocess
    import tempfile

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    with tempfile.TemporaryFile("w+") as err:
        # A shell without job control starts background commands with SIGINT ignored, and an
        # ignored SIGINT stays ignored across exec (CI may run the suite that way): give the
        # training the default disposition a terminal's foreground process has.
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            cwd=ROOT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            started = _wait_for(lambda: ready() or process.poll() is not None, timeout)
            assert started and process.poll() is None, "the training ended before it was ready"
            process.send_signal(signal.SIGINT)
            status = process.wait(timeout=60)
        finally:
            process.kill()
            process.wait()
        err.seek(0)
        return status, err.read()


@pytest.mark.slow
def test_a_real_ctrl_c_stops_pathfinder_training_cleanly(tmp_path):
    """SIGINT to ``tools/train_pathfinder.py`` once it has written a checkpoint: status 130, one
    line naming it, the checkpoint whole (resumable) and the folder's lock released (slow: 56 s
    on a loaded shared 2-core machine, mostly the subprocess's imports and first epoch)."""
    import sys

    argv = _pathfinder_argv(tmp_path, "SOLVER.EPOCHS", "100000", "NUM_THREADS", "1")
    command = [sys.executable, os.path.join(ROOT, "tools", "train_pathfinder.py"), *argv]
    last = tmp_path / "run" / "last.pth"
    status, err = _interrupt_when(command, last.exists)
    assert status == 130, err
    line = _one_line(err)
    assert line.startswith("train_pathfinder.py: interrupted (Ctrl-C); the last checkpoint is ")
    assert str(last) in line and "--resume" in line
    assert load_torch_file(str(last))["epoch"] >= 1  # whole, read by the safe loader
    assert not (tmp_path / "run" / ".run.lock").exists()


@pytest.mark.slow
def test_a_real_ctrl_c_stops_detectron2_training_cleanly(tmp_path):
    """SIGINT to ``tools/train_net.py`` (quick recipe, CPU) once it has written a checkpoint:
    status 130, one line naming the last checkpoint, which is whole (72 s on a loaded shared
    2-core machine: the model is built in the subprocess)."""
    import sys

    pytest.importorskip("detectron2")
    run = tmp_path / "run"
    command = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file"]
    command += [D2_CONFIG, "OUTPUT_DIR", str(run), "DATASETS.TEST", "()"]
    command += ["SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "1"]
    status, err = _interrupt_when(command, (run / "last_checkpoint").exists)
    assert status == 130, err
    line = _one_line(err)
    assert line.startswith("train_net.py: interrupted (Ctrl-C); the last checkpoint is ")
    name = (run / "last_checkpoint").read_text().strip()
    assert f"{run / name} (continue from it with --resume)" in line
    assert "model" in load_torch_file(str(run / name))  # whole
    assert not (run / ".run.lock").exists()
