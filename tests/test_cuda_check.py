"""The GPU check (tools/cuda_check.sh and its Python parts) run end to end on the CPU at tiny
sizes, so the script that runs on the first lent GPU has already run here."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crbp_d2.utils.bench import SAVED_COUNTER

ROOT = Path(__file__).resolve().parents[1]
FILES = (
    "env.json",
    "memory_cuda.json",
    "memory_cuda.md",
    "memory_cuda.png",
    "rfpn_cuda.json",
    "rfpn_cuda.md",
    "rfpn_cuda.png",
    "pathfinder_cuda.json",
    "pathfinder_cuda.md",
    "resume_cuda.json",
    "resume_cuda.md",
    "speed_cuda.json",
    "speed_cuda.md",
    "speed_cuda.png",
    "summary.md",
)


def _run_script(*args, env_extra=None):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "cuda_check.sh"), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """One ``bash tools/cuda_check.sh OUT --smoke`` run for the tests below (about 30 s)."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    pytest.importorskip("detectron2")
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    done = _run_script(out, "--smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_smoke_writes_the_files_of_a_gpu_run_and_nothing_else(smoke_dir):
    assert sorted(p.name for p in smoke_dir.iterdir()) == sorted(FILES)
    for name in FILES:
        if name.endswith(".png"):
            assert (smoke_dir / name).stat().st_size > 1000, name
    env = json.loads((smoke_dir / "env.json").read_text())
    assert (
        env["mode"] == "smoke"
        and env["cuda_available"] is torch.cuda.is_available()
        and env["torch"]
    )
    summary = (smoke_dir / "summary.md").read_text()
    assert "CPU smoke test" in summary and "missing" not in summary
    # hGRU core, R-FPN memory + training, Pathfinder, resume, speed
    assert summary.count("|---|") == 6


def test_smoke_hgru_core_memory(smoke_dir):
    records = json.loads((smoke_dir / "memory_cuda.json").read_text())
    assert {(r["method"], r["steps"]) for r in records} == {
        (m, n) for m in ("bptt", "crbp") for n in (2, 4)
    }
    for r in records:
        assert r["peak_kind"] == "cpu_peak_rss" and r["saved_bytes"] > 0
        assert all(_finite(r[k]) for k in ("peak_bytes", "step_bytes", "seconds"))
        assert r["saved_counter"] == SAVED_COUNTER  # a GPU run records the storage count
    assert "each storage once" in (smoke_dir / "memory_cuda.md").read_text()


def test_smoke_rfpn_report(smoke_dir):
    report = json.loads((smoke_dir / "rfpn_cuda.json").read_text())
    assert report["device_type"] == "cpu" and report["memory_measure"] == "saved_tensor_bytes"
    assert [r["variant"] for r in report["memory"]] == ["BPTT-2", "CRBP-2", "BPTT-4", "CRBP-4"]
    for r in report["memory"]:
        assert "error" not in r and r["memory_bytes"] == r["saved_bytes"] > 0
        assert 0 < r["mask_head_saved_bytes"] < r["saved_bytes"]
        assert r["saved_counter"] == SAVED_COUNTER
        assert r["peak_allocated_bytes"] is None and r["step_bytes"] is None
        assert all(_finite(r[k]) for k in ("seconds_per_iter", "loss", "mask_rois"))
    assert "mask head saved (MiB)" in (smoke_dir / "rfpn_cuda.md").read_text()
    head = {r["variant"]: r["mask_head_saved_bytes"] for r in report["memory"]}
    assert head["BPTT-4"] > head["BPTT-2"]  # BPTT saves every step; C-RBP does not grow
    assert head["CRBP-4"] == head["CRBP-2"]
    amp, fp32 = report["amp"], report["fp32"]
    # CPU: SOLVER.AMP.ENABLED is refused, so the bfloat16 path ran, and the report says so
    assert amp["amp"] and amp["dtype"] == "bfloat16" and not amp["config_amp_enabled"]
    assert amp["mask_logits_dtype"] == "bfloat16" and "bfloat16" in amp["note"]
    assert not amp["grad_scaler"] and amp["skipped_steps"] == 0
    assert not fp32["amp"] and fp32["dtype"] == fp32["mask_logits_dtype"] == "float32"
    for run in (amp, fp32):
        assert run["all_finite"] and run["iterations"] == len(run["losses"]) >= 2
        assert all(_finite(x) for x in run["losses"] + [run["seconds_per_iter"]])
    assert set(report["seconds"]) == {"memory", "amp", "fp32"}
    assert "| CRBP-2 AMP | bfloat16 |" in (smoke_dir / "rfpn_cuda.md").read_text()
    for run in (amp, fp32):
        assert run["diverged"] is None and run["iterations_run"] == run["iterations"]
        assert run["clip_norm"] == report["settings"]["clip_norm"] == 1.0


def test_rfpn_amp_training_records_a_divergence_and_clips_gradients(monkeypatch):
    """A run whose boxes become non-finite (Detectron2 raises FloatingPointError) is recorded as
    diverged, with the losses up to there, instead of ending the check; and the optimizer clips
    each parameter's gradient norm as Detectron2's SOLVER.CLIP_GRADIENTS does."""
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.config import get_crbp_cfg
    from crbp_d2.rfpn.experiments import cuda_check as check

    import torch

    class Diverging(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3))
            self.calls = 0
            head = torch.nn.Module()
            head.predictor = torch.nn.Identity()
            self.roi_heads = torch.nn.Module()
            self.roi_heads.mask_head = head

        def forward(self, batch):
            self.calls += 1
            if self.calls == 3:
                raise FloatingPointError("Predicted boxes or scores contain Inf/NaN.")
            self.roi_heads.mask_head.predictor(self.weight)
            return {"loss": (self.weight * 1000.0).sum()}  # gradient norm 1732 per step

    model = Diverging()
    cfg = get_crbp_cfg(check.TINY_CONFIG, ["MODEL.DEVICE", "cpu"])
    monkeypatch.setattr(check, "_build", lambda settings, variant, extra=(): (cfg, model, None))
    settings = check.RFPNCheck.tiny(device="cpu", amp_iters=5, lr=0.1)
    record = check.amp_training(settings, False, log=lambda line: None)
    assert record["diverged"].startswith("iteration 2: Predicted boxes")
    assert record["iterations_run"] == 2 and len(record["losses"]) == 2
    assert not record["all_finite"]
    # clipped to norm 1 per parameter: SGD (momentum 0.9) moved each weight by 0.1 / sqrt(3) and
    # then 0.1 * 1.9 / sqrt(3), not by 0.1 * 1000
    torch.testing.assert_close(model.weight.detach(), torch.full((3,), 1 - 0.29 / 3**0.5))


def test_smoke_resume_report_is_bit_exact_on_the_cpu(smoke_dir):
    record = json.loads((smoke_dir / "resume_cuda.json").read_text())
    assert record["iterations"] == 6 and record["stopped_at"] == 3
    for key in ("uninterrupted_vs_uninterrupted", "uninterrupted_vs_resumed"):
        assert record[key]["bit_equal"] and record[key]["max_abs"] == 0.0
        assert record[key]["tensors"] > 100 and record[key]["tensors_differing"] == 0
    assert "| two uninterrupted runs | yes | 0 of" in (smoke_dir / "resume_cuda.md").read_text()


def test_resume_comparison_names_the_tensors_that_differ():
    from crbp_d2.rfpn.experiments.resume import compare

    import torch

    a = {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor([1e-3]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([1.0, -2.5]), "b": torch.tensor([-1e-3]), "n": torch.tensor(3)}
    result = compare(a, b)
    assert not result["bit_equal"] and result["tensors"] == 2 and result["tensors_differing"] == 2
    assert result["max_abs"] == 0.5 and result["max_abs_tensor"] == "w"
    assert result["max_rel"] == pytest.approx(2.0) and result["max_rel_tensor"] == "b"
    assert compare(a, a)["bit_equal"] and compare(a, a)["max_abs"] == 0.0


def test_smoke_pathfinder_report(smoke_dir):
    report = json.loads((smoke_dir / "pathfinder_cuda.json").read_text())
    assert report["tiny"] and report["memory_measure"] == "saved_tensor_bytes"
    assert [m["method"] for m in report["memory"]] == ["bptt", "cbptt", "rbp", "crbp"]
    for m in report["memory"]:
        assert m["memory_gb"] == m["saved_gb"] > 0 and m["peak_allocated_gb"] is None
        assert m["saved_counter"] == SAVED_COUNTER
        assert _finite(m["loss"]) and _finite(m["seconds_per_step"])
    assert "each storage once (GB)" in (smoke_dir / "pathfinder_cuda.md").read_text()
    training = report["training"]
    assert training["iterations"] >= 1 and training["amp_dtype"] is None
    assert set(training["test"]) == {"20", "60"}
    assert all(_finite(v) for v in training["test"]["60"].values() if not isinstance(v, bool))
    assert set(report["seconds"]) == {"memory", "training", "evaluation"}


def test_script_refuses_an_unwritable_out_dir_or_an_unknown_option_before_any_work(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    done = _run_script(blocker / "out", "--smoke", env_extra={"PYTHON": "false"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"cuda_check.sh: error: cannot write to OUT_DIR '{blocker}/out'"
    ]
    done = _run_script(tmp_path / "out", "--fast")
    assert done.returncode == 2 and "unknown option '--fast'" in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_writable_output_file_takes_a_folder_or_a_json_file(tmp_path):
    from crbp_d2.cli._common import writable_output_file

    assert writable_output_file(str(tmp_path), "r.json") == str(tmp_path / "r.json")
    new = tmp_path / "new" / "folder"
    assert writable_output_file(str(new), "r.json") == str(new / "r.json") and new.is_dir()
    assert writable_output_file(str(tmp_path / "x" / "mine.json"), "r.json") == str(
        tmp_path / "x" / "mine.json"
    )
    (tmp_path / "taken.json").mkdir()  # a folder named like a file is a folder
    assert writable_output_file(str(tmp_path / "taken.json"), "r.json").endswith(
        "taken.json/r.json"
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot write .*file/sub/r.json"):
        writable_output_file(str(tmp_path / "file" / "sub"), "r.json")
    assert not list(tmp_path.glob("**/.write-check-*"))


def _check_cli_out(monkeypatch, tmp_path, capsys, module, runner, argv, name):
    """``--out`` as a folder, as a .json file, and unwritable (one line, exit 2, no work)."""
    calls = []
    monkeypatch.setattr(module, runner, lambda *a, **k: calls.append(a))
    assert module.main([*argv, "--out", str(tmp_path / "dir")]) == 0
    assert str(tmp_path / "dir" / name) in calls[-1]
    assert module.main([*argv, "--out", str(tmp_path / "mine.json")]) == 0
    assert str(tmp_path / "mine.json") in calls[-1]
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert module.main([*argv, "--out", str(tmp_path / "file" / "out")]) == 2
    assert len(calls) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: cannot write" in err[0] and "file/out" in err[0]


def test_pathfinder_check_out_folder_file_and_unwritable(monkeypatch, tmp_path, capsys):
    from crbp_d2.cli import cuda_pathfinder_check

    _check_cli_out(
        monkeypatch, tmp_path, capsys, cuda_pathfinder_check, "run_cuda_check",
        ["--device", "cpu", "--tiny"], "pathfinder_cuda.json",
    )  # fmt: skip


def test_rfpn_check_out_folder_file_and_unwritable(monkeypatch, tmp_path, capsys):
    pytest.importorskip("detectron2")
    from crbp_d2.cli import cuda_rfpn_check

    _check_cli_out(
        monkeypatch, tmp_path, capsys, cuda_rfpn_check, "run_rfpn_cuda_check",
        ["--tiny"], "rfpn_cuda.json",
    )  # fmt: skip
    # a bad config key fails in one line before any model is built
    assert cuda_rfpn_check.main(["--tiny", "--out", str(tmp_path), "MODEL.NOPE", "1"]) == 2
    assert "MODEL.NOPE" in capsys.readouterr().err


def test_gpu_timeouts_fit_one_ten_minute_device_call(tmp_path):
    """tools/cuda_check.sh (GPU mode) with stand-ins for python3 and timeout: every part runs,
    the Pathfinder part's timeout outwaits its training, and all timeouts add up to < 10 min."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name, body in (
        ("python3", f'echo "python3 $*" >> {log}'),
        ("timeout", f'echo "timeout $1" >> {log}; shift; "$@"'),
    ):
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("PYTHON", None)
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "cuda_check.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    timeouts = [int(c.split()[1]) for c in calls if c.startswith("timeout")]
    parts = [calls[i + 1] for i, c in enumerate(calls) if c.startswith("timeout")]
    assert [p.split()[1] for p in parts] == [
        "tools/benchmark_memory.py",
        "tools/cuda_rfpn_check.py",
        "tools/cuda_pathfinder_check.py",
        "-m",
        "-m",
        "tools/cuda_check_summary.py",
    ]
    assert "crbp_d2.cli.rfpn_resume_check" in parts[3]
    assert "crbp_d2.benchmarks.speed --core-device cuda" in parts[4]
    assert all("--device cuda" in p for p in parts[:4])
    assert f"--json {out}/memory_cuda.json" in parts[0] and f"--out {out}" in parts[1]
    pathfinder = parts[2].split()
    assert pathfinder[pathfinder.index("--out") + 1] == str(out)
    train_seconds = 60 * float(pathfinder[pathfinder.index("--train-minutes") + 1])
    assert timeouts[2] >= train_seconds + 120
    assert sum(timeouts) < 600
