"""Anderson vs plain iteration (crbp_d2.benchmarks.solvers) on a linear contraction with a known
fixed point, and the command line on a bad checkpoint."""

import pytest
import torch
from torch import nn

from crbp_d2.benchmarks import solvers
from crbp_d2.cli import benchmark_solvers


class LinearContraction(nn.Module):
    """h <- A h + x with a symmetric A of spectral radius 0.95: plain iteration is slow."""

    def __init__(self, size: int = 40) -> None:
        super().__init__()
        torch.manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))
        eigenvalues = torch.linspace(-0.95, 0.95, size, dtype=torch.float64)
        self.register_buffer("matrix", q @ torch.diag(eigenvalues) @ q.T)

    def forward(self, drive, state):
        return state @ self.matrix.T + drive


def test_anderson_reaches_the_plain_residual_with_fewer_evaluations():
    cell = LinearContraction()
    drive = torch.randn(3, 40, dtype=torch.float64)
    records = solvers.solver_comparison(cell, drive, steps=30, settings=[(5, 1.0)])
    plain, accelerated = records
    assert plain["solver"] == "iterate" and plain["evaluations"] == 30
    # the slowest mode shrinks by 0.95 per step: 30 plain steps leave a visible residual
    assert plain["target_residual"] > 1e-3
    assert accelerated["converged"] and accelerated["residual"] <= plain["residual"]
    assert accelerated["evaluations"] < 30 and accelerated["evaluation_share"] < 1
    table = solvers.solver_table(records)
    assert "plain iteration" in table and "Anderson m=5, damping 1.0" in table


def test_bad_arguments_and_files_are_one_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="steps"):
        solvers.solver_comparison(LinearContraction(), torch.zeros(1, 40), steps=0)
    with pytest.raises(SystemExit) as exit_info:
        benchmark_solvers.main(
            ["--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "r")]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pth" in err[0]
