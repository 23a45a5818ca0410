"""Both trainers stop on a non-finite loss with the same error, which both programs turn into
one line ending in exit status 1."""

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
