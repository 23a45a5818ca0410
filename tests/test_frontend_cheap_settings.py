"""The cheap C-RBP settings read from the config of each front-end reach the logs: the cell
evaluations and Neumann terms actually used and whether Anderson fell back."""

import csv
import os

import pytest
import torch
from test_pathfinder_trainer import LineDataset, tiny_cfg

from crbp_d2.pathfinder.train.loop import Trainer


def test_pathfinder_training_log_has_the_evaluations_terms_and_fallback(tmp_path):
    cfg = tiny_cfg(
        tmp_path,
        "MODEL.RECURRENT.TIMESTEPS",
        30,
        "MODEL.RECURRENT.NEUMANN_STEPS",
        40,
        "MODEL.RECURRENT.FORWARD_SOLVER",
        "anderson",
        "MODEL.RECURRENT.SOLVER_TOL",
        1e-2,
        "MODEL.RECURRENT.NEUMANN_TOL",
        0.5,
        "SOLVER.EPOCHS",
        1,
    )
    Trainer(cfg, LineDataset(8), LineDataset(4, seed=1), progress=False).train()
    with open(os.path.join(cfg.OUTPUT_DIR, "train_log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        assert 1 <= float(row["forward_evaluations"]) < 30
        assert 1 <= float(row["neumann_terms"]) < 40
        assert float(row["solver_fell_back"]) in (0.0, 1.0)
        assert float(row["solver_residual"]) <= 1e-2


def test_detectron2_head_logs_the_evaluations_terms_and_fallback():
    pytest.importorskip("detectron2")
    from detectron2.utils.events import EventStorage
    from test_d2_head import build_head, features, small_cfg, training_instances

    head = build_head(
        small_cfg(
            METHOD="crbp",
            TIMESTEPS=30,
            NEUMANN_STEPS=40,
            FORWARD_SOLVER="anderson",
            SOLVER_TOL=1e-2,
            NEUMANN_TOL=0.5,
        )
    )
    with torch.no_grad():
        head.engine.cell.gate_exc.bias.fill_(2.0)  # a contraction at init
    with EventStorage() as storage:
        losses = head(features(5), training_instances())
        sum(losses.values()).backward()
        scalars = {k: v[0] for k, v in storage.latest().items()}
    assert 1 <= scalars["crbp/forward_evaluations"] < 30
    assert scalars["crbp/solver_fell_back"] in (0.0, 1.0)
    assert scalars["crbp/solver_residual"] <= 1e-2
    assert 1 <= scalars["crbp/neumann_terms"] < 40


def test_detectron2_timecourse_has_every_step_with_anderson_at_inference():
    """The timestep sweep reads step t of ``pred_masks_steps``: with FORWARD_SOLVER anderson and
    a SOLVER_TOL it holds every step 1..T (plain steps), not the solver's fewer iterates."""
    pytest.importorskip("detectron2")
    from detectron2.structures import Instances
    from test_d2_head import WIDTH, build_head, small_cfg

    head = build_head(
        small_cfg(
            METHOD="crbp", TIMESTEPS=6, TEST_TIMESTEPS=18, FORWARD_SOLVER="anderson",
            SOLVER_TOL=0.3,
        )
    ).eval()  # fmt: skip
    with torch.no_grad():
        head.engine.cell.gate_exc.bias.fill_(2.0)  # a contraction: Anderson stops early
    x = torch.randn(2, WIDTH, 14, 14)

    def instances():
        return [Instances((64, 64), pred_classes=torch.tensor([0, 1]))]

    with torch.no_grad():
        solved = instances()
        head(x, solved)
        assert head.last_diagnostics["steps"] < 18  # the solver stops early
        head.return_timecourse = True
        course = instances()
        head(x, course)
    assert course[0].pred_masks_steps.shape == (2, 18, 28, 28)
    assert head.last_diagnostics["steps"] == 18
