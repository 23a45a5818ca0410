"""Distribution checks of the generator against the reference measurements (~15 s).

Reference figures (measured on the original generator):
label 0.24 % of pixels at 300 and foreground 0.41 % at 150 (PF14); 15 distractors placed
(PF14), 13 (PF25); PF25 end-to-end distance p5 84 px / p95 233 px; contacts with the label in
8.3 % of PF14 images with the original's bugs; marker-only IoU@150 0.26 and flood fill (k = 2)
0.63 on PF14. Tolerances allow for sampling noise (a few hundred images) and for the
documented rendering differences.
"""

import numpy as np

from crbp_d2.contours.generator import preset
from crbp_d2.contours.stats import path_statistics
from crbp_d2.pathfinder.data.datasets import PathfinderOnTheFly, PathfinderTransform
from crbp_d2.pathfinder.evaluation.baselines import dataset_pairs, evaluate_baselines


def test_pf14_statistics_match_the_reference():
    stats = path_statistics(preset(14), seed=21, num=400)
    assert stats["label_components_ok_rate"] == 1.0
    assert stats["contact_rate"] == 0.0 and stats["twin_overlap_rate"] == 0.0
    assert 0.21 <= stats["label_percent"] <= 0.27
    assert stats["distractors_placed_mean"] >= 14.9
    assert 3.0 <= stats["pair_restarts_mean"] <= 6.0
    assert 14.5 <= stats["turn_mean_abs_deg"] <= 16.5
    assert abs(stats["pitch_mean"] - 11) <= 0.5
    assert stats["turn_max_abs_deg"] <= 50.0


def test_pf14_legacy_quirks_contact_rate_matches_the_reference():
    stats = path_statistics(preset(14, legacy_quirks=True), seed=21, num=400)
    assert 0.04 <= stats["contact_rate"] <= 0.14  # reference 8.3 %
    assert 0.01 <= stats["twin_overlap_rate"] <= 0.09  # reference 1.3-6 %


def test_pf25_path_shape_matches_the_reference():
    stats = path_statistics(preset(25), seed=21, num=80)
    assert 12.0 <= stats["distractors_placed_mean"] <= 14.2  # reference 13.0
    assert 60 <= stats["end_to_end_p5"] <= 110  # reference 84 px
    assert 215 <= stats["end_to_end_p95"] <= 250  # reference 233 px
    assert 35 <= stats["pair_restarts_mean"] <= 110  # reference 56-64


def test_pf14_foreground_and_baselines_at_150_match_the_reference():
    dataset = PathfinderOnTheFly(
        preset(14), num=250, seed=22, transform=PathfinderTransform(150, flip=False)
    )
    foreground = np.mean([dataset[i][1].float().mean().item() for i in range(len(dataset))])
    assert 0.0036 <= foreground <= 0.0046  # reference 0.41 %
    results = evaluate_baselines(dataset_pairs(dataset), marker_radius=2.5, radii=(1, 2, 3))
    assert 0.22 <= results["marker_only"]["mean_iou"] <= 0.32  # reference 0.26
    assert 0.55 <= results["flood_fill_k2"]["mean_iou"] <= 0.72  # reference 0.63
