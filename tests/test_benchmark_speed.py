"""The speed benchmark's report (crbp_d2.benchmarks.speed): the factors in its table and its
input errors; its measurements run in tests/test_cuda_check.py (core_step, smoke)."""

import pytest

from crbp_d2.benchmarks import speed


def _record(measure, variant, seconds, **extra):
    return {
        "measure": measure,
        "variant": variant,
        "seconds": seconds,
        "settings": {"steps": 20},
        "shared_machine": True,
        "machine": {"device": "test cpu", "torch": "x"},
        **extra,
    }


def test_table_gives_the_factors_against_crbp20_and_the_baseline():
    records = [
        _record("pathfinder_step", "bptt6", 1.0, forward_evaluations=6),
        _record("pathfinder_step", "crbp20", 2.5, forward_evaluations=20, neumann_terms=15),
        _record(
            "pathfinder_step",
            "crbp20-fast",
            2.0,
            forward_evaluations=8,
            neumann_terms=9,
            forward_seconds=0.5,
            backward_seconds=1.5,
        ),
        _record("rfpn_step", "bptt5", 4.0),
        _record("rfpn_step", "crbp20", 8.0),
    ]
    text = speed.table(records)
    assert "| pathfinder_step | crbp20-fast | 2.000 | 0.80 | 2.00 | 8 | 9 | 0.500 | 1.500 |" in text
    assert "| rfpn_step | crbp20 | 8.000 | 1.00 | 2.00 | 20 |  |  |  |" in text
    assert "Shared machine" in text and "test cpu" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--measures", "gpu_step"], "unknown measure 'gpu_step'"),
        (["--pathfinder-variants", "crbp99"], "unknown pathfinder_step variant 'crbp99'"),
    ],
)
def test_bad_arguments_are_one_clear_error(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        speed.main(argv + ["--out", str(tmp_path / "x")])
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
