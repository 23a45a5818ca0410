"""Both trainers stop on a non-finite loss with the same error, which both programs turn into
one line ending in exit status 1."""

from pathlib import Path

import pytest

from crbp_d2.cli._common import TRAINING_STOPPED_STATUS, training_stops_in_one_line
from crbp_d2.pathfinder.train.loop import NonFiniteLossError as PathfinderError
from crbp_d2.utils.errors import NonFiniteLossError


def test_one_error_for_both_trainers():
    assert PathfinderError is NonFiniteLossError
    assert issubclass(NonFiniteLossError, FloatingPointError)
    pytest.importorskip("detectron2")
    from crbp_d2.rfpn.train.trainer import NonFiniteLossError as RFPNError

    assert RFPNError is NonFiniteLossError


def test_a_pathfinder_stop_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        with training_stops_in_one_line("train_pathfinder.py"):
            raise PathfinderError("loss is nan at epoch 3, iteration 3;\nlast diagnostics {}")
    assert stop.value.code == TRAINING_STOPPED_STATUS
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "train_pathfinder.py: error: training stopped: loss is nan at epoch 3, iteration 3; "
        "last diagnostics {}"
    ]


NAN = "loss is nan at epoch 1, iteration 2;\nthe checkpoints in the run folder are kept"
ONE_LINE = (  # the message joined into one line
    "training stopped: loss is nan at epoch 1, iteration 2; the checkpoints in the run folder "
    "are kept"
)


def _stop_status(program, argv) -> int:
    with pytest.raises(SystemExit) as stop:
        program.main(argv)
    return stop.value.code


def test_train_pathfinder_stops_through_the_shared_handler(tmp_path, monkeypatch, capsys):
    """train_pathfinder.py's main() ends a non-finite loss with the shared one-line handler:
    the message on one line (a two-line message is joined), exit status 1."""
    from crbp_d2.cli import train_pathfinder

    def nan_run(args, cfg):
        raise NonFiniteLossError(NAN)

    monkeypatch.setattr(train_pathfinder, "_run", nan_run)
    config = tmp_path / "pf.yaml"
    config.write_text(f"OUTPUT_DIR: {tmp_path / 'run'}\n")
    assert _stop_status(train_pathfinder, ["--config-file", str(config)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train_pathfinder.py: error: {ONE_LINE}"
    ]
    assert not (tmp_path / "run" / ".run.lock").exists()  # the folder's lock is released


@pytest.mark.parametrize("program_name", ["train_net", "lazyconfig_train_net"])
def test_both_programs_stop_on_a_non_finite_loss_with_the_same_line(
    tmp_path, monkeypatch, capsys, program_name
):
    """The Detectron2 programs and train_pathfinder.py stop on the same error with the same
    line (their names aside) and the same status."""
    pytest.importorskip("detectron2")
    from crbp_d2.cli import lazyconfig_train_net, train_net, train_pathfinder

    def nan_launch(*args, **kwargs):
        raise NonFiniteLossError(NAN)

    root = Path(__file__).resolve().parents[1]
    if program_name == "train_net":
        program = train_net
        config = root / "configs" / "quick" / "R-FPN-R50-CRBP-synthetic-test.yaml"
        argv = ["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "d2")]
    else:
        program = lazyconfig_train_net
        config = root / "configs" / "lazy" / "quick" / "R-FPN-R50-CRBP-synthetic-test.py"
        argv = ["--config-file", str(config), f"train.output_dir={tmp_path / 'd2'}"]
    monkeypatch.setattr(program, "launch", nan_launch)
    status = _stop_status(program, argv)
    line = capsys.readouterr().err.strip().splitlines()[-1]

    monkeypatch.setattr(train_pathfinder, "_run", lambda args, cfg: nan_launch())
    pf_config = tmp_path / "pf.yaml"
    pf_config.write_text(f"OUTPUT_DIR: {tmp_path / 'pf'}\n")
    pf_status = _stop_status(train_pathfinder, ["--config-file", str(pf_config)])
    pf_lines = capsys.readouterr().err.strip().splitlines()

    assert status == pf_status == TRAINING_STOPPED_STATUS
    assert len(pf_lines) == 1
    prog = program_name + ".py"
    assert line == f"{prog}: error: {ONE_LINE}"
    assert line.replace(prog, "train_pathfinder.py", 1) == pf_lines[0]
