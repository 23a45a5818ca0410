"""utils.procs.run_logged (the experiments' one way to run a training subprocess) and the one
reader of Detectron2's metrics.json."""

import json
import sys

import pytest

from crbp_d2.utils import metrics_json as metrics
from crbp_d2.utils.procs import run_logged

PRINT_THREADS = "import os; print('threads', os.environ['OMP_NUM_THREADS'], flush=True)"


def test_output_goes_to_the_log_with_time_and_memory(tmp_path):
    log = tmp_path / "run.log"
    done = run_logged([sys.executable, "-c", PRINT_THREADS], str(log), threads=3)
    assert log.read_text().strip() == "threads 3"
    assert done["returncode"] == 0 and done["seconds"] > 0
    assert 1 < done["peak_rss_mib"] < 10_000  # a Python interpreter: a few MiB at least


def test_a_failure_names_the_command_status_and_log_tail(tmp_path):
    log = tmp_path / "run.log"
    command = [sys.executable, "-c", "import sys; print('the end of it'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"failed \(3\); .*run\.log:\nthe end of it"):
        run_logged(command, str(log))
    assert run_logged(command, str(log), check=False)["returncode"] == 3


def test_metrics_reader(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [
        {"iteration": 19, "time": 0.5},
        {"iteration": 39, "time": 0.7, "panoptic_seg/PQ": 10.0},
        {"iteration": 39, "time": 0.6},
        {"eval_only": True, "panoptic_seg/PQ": 12.0},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert metrics.final_results(str(path))["panoptic_seg/PQ"] == 12.0
    assert metrics.eval_only_results(str(path)) == lines[-1]
    assert metrics.seconds_per_iter(str(path)) == pytest.approx(0.6)
    path.write_text(json.dumps(lines[0]) + "\n")
    with pytest.raises(RuntimeError, match="holds no --eval-only results"):
        metrics.eval_only_results(str(path))
