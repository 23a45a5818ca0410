"""The fine-tuned-vs-scratch measurement (crbp_d2.rfpn.experiments.finetune), without training:
its runs, their config overrides (valid keys, the right start and freezing) and its table."""

from pathlib import Path

import pytest

pytest.importorskip("detectron2")

from crbp_d2.rfpn.config import get_crbp_cfg  # noqa: E402
from crbp_d2.rfpn.experiments import finetune as ft  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_runs_and_their_configs():
    runs = ft.finetune_runs([500, 1750], [0, 1])
    assert [r.name for r in runs[:2]] == ["fpn/steps1750/seed0", "fpn/steps1750/seed1"]
    assert len(runs) == 2 + 2 * 2 * 2
    assert ft.budget_opts(1750)[-1] == "(1575, 1690)"  # the recipe's own drops
    recipe = get_crbp_cfg(str(ROOT / ft.CONFIGS["scratch"]))
    assert tuple(recipe.SOLVER.STEPS) == (1575, 1690) and recipe.SOLVER.MAX_ITER == 1750
    with pytest.raises(ValueError, match="too short for two LR drops"):
        ft.budget_opts(10)
    for run in runs:
        cfg = get_crbp_cfg(str(ROOT / ft.CONFIGS[run.arm]), run.train_opts("fpn_final.pth"))
        head = cfg.MODEL.ROI_MASK_HEAD
        if run.arm == "fpn":
            assert head.NAME == "MaskRCNNConvUpsampleHead" and cfg.SOLVER.MAX_ITER == 1750
            continue
        assert head.NAME == "RecurrentMaskHead" and cfg.SOLVER.MAX_ITER == run.budget
        assert cfg.SEED == run.seed
        finetune = run.arm == "finetune"
        assert cfg.SOLVER.TRAIN_ONLY_HEAD == finetune
        assert cfg.MODEL.WEIGHTS == ("fpn_final.pth" if finetune else "")
    with pytest.raises(ValueError, match="needs the FPN checkpoint"):
        ft.FinetuneRun("finetune", 500, 0).train_opts(None)


def test_table_has_one_row_per_arm_and_budget():
    def record(arm, budget, seed, minutes, ap):
        return dict(arm=arm, budget_steps=budget, seed=seed, train_minutes=minutes, mask_ap=ap,
                    pq_things=ap + 1, pq=ap + 2, box_ap=ap + 3, gt_box_iou=ap + 4)  # fmt: skip

    records = [
        record("fpn", 1750, 0, 3.9, 55.0),
        record("finetune", 500, 0, 1.0, 40.0),
        record("scratch", 500, 0, 1.7, 10.0),
        record("scratch", 500, 1, 1.9, 20.0),
    ]
    table = ft.finetune_table(records).splitlines()
    assert len(table) == 2 + 3
    assert "| 500 x 2 | 1.0 (+ 3.9 FPN) | 40.0 | 41.0 | 42.0 | 43.0 | 44.0 | 1 |" in table[3]
    assert "| 500 x 2 | 1.8 ± 0.1 | 15.0 ± 5.0 |" in table[4]
