"""Invariants of the Pathfinder segmentation generator: the format, geometry and metadata that
every image of the original generator has."""

import math
import time

import cv2
import numpy as np
import pytest

from crbp_d2.contours.generator import (
    GenerationError,
    PathfinderGenerator,
    PathfinderParams,
    generate_sample,
    preset,
)
from crbp_d2.contours.geometry import disk_kernel
from crbp_d2.contours.stats import (
    ks_uniform,
    label_contact,
    turn_law_moments,
    turn_pit_values,
)

PF14 = preset(14)
NUM_INVARIANT_SAMPLES = 40


@pytest.fixture(scope="module")
def pf14_samples():
    generator = PathfinderGenerator(PF14)
    return generator, [generator.sample(0, i) for i in range(NUM_INVARIANT_SAMPLES)]


def _frame_mask(size=300, padding=22):
    frame = np.ones((size, size), dtype=bool)
    frame[padding:-padding, padding:-padding] = False
    return frame


# ------------------------------------------------------------------------------- parameters
def test_presets_follow_the_crbp_settings():
    for length, distractor_length in ((6, 2), (9, 3), (14, 4), (20, 6), (25, 8)):
        params = preset(length)
        assert params.contour_length == length
        assert params.distractor_contour_length == distractor_length
        assert params.num_distractors == 15
        assert preset(length, distractor_rule="ratio").num_distractors == 30 // distractor_length
    assert (PF14.canvas_size, PF14.padding, PF14.paddle_length, PF14.paddle_thickness) == (
        300,
        22,
        5,
        2,
    )
    assert (PF14.paddle_margin, PF14.continuity, PF14.marker_radius, PF14.seed_distance) == (
        3,
        1.8,
        5,
        27,
    )
    assert PF14.antialias_scale == 2 and PF14.origin_border == 54 and not PF14.legacy_quirks
    assert preset(14, canvas_size=400, num_distractors=3).canvas_size == 400


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(contour_length=0), "contour_length must be >= 1, got 0"),
        (dict(padding=-1), "padding must be >= 0, got -1"),
        (dict(continuity=0), "continuity must be > 0"),
        (dict(padding=150), "padding 150 leaves no drawable area"),
        (dict(seed_distance=80), "no room for the first origin"),
        (dict(contour_length=2.5), "contour_length must be an integer"),
    ],
)
def test_bad_parameters_raise_one_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        PathfinderParams(**bad)


def test_preset_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown Pathfinder parameter"):
        preset(14, contour_lenght=3)
    with pytest.raises(ValueError, match="distractor_rule"):
        preset(14, distractor_rule="many")


def test_impossible_contour_stops_with_a_message_after_bounded_restarts():
    generator = PathfinderGenerator(preset(120, max_pair_restarts=30))
    began = time.perf_counter()
    with pytest.raises(
        GenerationError, match="could not place the two contours of contour_length=120 after 30"
    ):
        generator.sample(0, 0)
    assert time.perf_counter() - began < 10


# ------------------------------------------------------------------------------- invariants
def test_image_and_label_format(pf14_samples):
    _, samples = pf14_samples
    for sample in samples:
        assert sample.image.shape == (300, 300) and sample.image.dtype == np.uint8
        assert sample.label.shape == (300, 300) and sample.label.dtype == np.uint8
        assert set(np.unique(sample.label)) == {0, 255}
        assert sample.image.max() == 255
        assert (sample.image == 0).mean() > 0.9  # background is exactly 0


def test_label_lies_inside_the_ink(pf14_samples):
    _, samples = pf14_samples
    for sample in samples:
        assert (sample.image[sample.label > 0] >= 128).all()


def test_label_has_exactly_contour_length_components(pf14_samples):
    _, samples = pf14_samples
    for sample in samples:
        count = cv2.connectedComponents((sample.label > 0).astype(np.uint8), connectivity=8)[0] - 1
        assert count == 14


def test_no_ink_in_the_frame(pf14_samples):
    _, samples = pf14_samples
    frame = _frame_mask()
    for sample in samples:
        assert not sample.image[frame].any()


def test_one_marker_disk_of_radius_5_on_the_target_origin_tip(pf14_samples):
    _, samples = pf14_samples
    for sample in samples:
        # An opening by a radius-3 disk removes the 2-px dashes and keeps only the marker.
        ink = (sample.image >= 128).astype(np.uint8)
        opened = cv2.morphologyEx(ink, cv2.MORPH_OPEN, disk_kernel(3))
        count, components, stats, centroids = cv2.connectedComponentsWithStats(
            opened, connectivity=8
        )
        assert count - 1 == 1, "exactly one disk-shaped blob"
        radius = math.sqrt(stats[1, cv2.CC_STAT_AREA] / math.pi)
        assert abs(radius - 5) <= 0.5
        centre = centroids[1][::-1]  # (row, col)
        target = sample.meta.target
        assert np.linalg.norm(centre - target.tails[0]) <= 1.0
        assert tuple(target.tails[0]) == sample.meta.marker_center
        assert sample.label[sample.meta.marker_center] == 255


def test_twin_origin_is_27_px_from_the_marked_origin(pf14_samples):
    _, samples = pf14_samples
    for sample in samples:
        meta = sample.meta
        distance = np.linalg.norm(meta.twin.tails[0] - meta.target.tails[0])
        assert abs(distance - 27) <= 1
        assert meta.target.length == meta.twin.length == 14
        assert len(meta.distractors) == meta.distractors_placed <= 15
        assert all(d.length == 4 for d in meta.distractors)


def test_pitch_and_turns_of_every_contour(pf14_samples):
    _, samples = pf14_samples
    for sample in samples:
        for contour in sample.meta.contours:
            pitch = np.linalg.norm(np.diff(contour.pivots, axis=0), axis=1)
            assert np.all(np.abs(pitch - 11) <= 1.5)
            assert np.all(np.abs(np.degrees(contour.turns)) <= 50 + 1e-6)


def test_metadata_matches_the_pixels(pf14_samples):
    """The geometry the other tests use is the geometry that was drawn: every target dash
    midpoint is inside a label component, and the label is exactly target + disk."""
    generator, samples = pf14_samples
    for sample in samples[:10]:
        meta = sample.meta
        count, components = cv2.connectedComponents(
            (sample.label > 0).astype(np.uint8), connectivity=8
        )
        hit = set()
        for tail, head in zip(meta.target.tails, meta.target.heads):
            mid = np.round((tail + head) / 2).astype(int)
            window = components[mid[0] - 1 : mid[0] + 2, mid[1] - 1 : mid[1] + 2]
            assert window.max() > 0
            hit.add(int(window.max()))
        assert hit == set(range(1, count))
        redrawn = generator.render_contours(
            [meta.target], marker=True, marker_center=meta.marker_center
        )
        assert np.array_equal(redrawn >= 128, sample.label > 0)
        everything = generator.render_contours(
            meta.contours, marker=True, marker_center=meta.marker_center
        )
        assert np.array_equal(everything * ~_frame_mask(), sample.image)


def test_image_turns_are_bounded_by_50_degrees_plus_quantisation(pf14_samples):
    """Turns measured from the pixels (dash orientation from second moments of each label
    component, consecutive components in metadata order) stay within 50 deg + quantisation."""
    _, samples = pf14_samples
    worst = 0.0
    for sample in samples[:15]:
        count, components = cv2.connectedComponents(
            (sample.label > 0).astype(np.uint8), connectivity=8
        )
        orientations = []
        for tail, head in list(zip(sample.meta.target.tails, sample.meta.target.heads))[1:]:
            mid = np.round((tail + head) / 2).astype(int)
            component = components[mid[0] - 1 : mid[0] + 2, mid[1] - 1 : mid[1] + 2].max()
            rows, cols = np.nonzero(components == component)
            cov = np.cov(np.stack([rows, cols]).astype(float))
            eigvals, eigvecs = np.linalg.eigh(cov)
            orientations.append(math.atan2(eigvecs[0, 1], eigvecs[1, 1]))
        for a, b in zip(orientations, orientations[1:]):
            delta = abs((b - a + math.pi / 2) % math.pi - math.pi / 2)  # orientation mod 180
            worst = max(worst, math.degrees(delta))
    assert worst <= 50 + 15  # pixel orientation of a 5x2 px dash is good to ~+-7 deg
    assert worst > 25  # the measurement sees real turns


def test_contours_never_touch_by_default(pf14_samples):
    generator, samples = pf14_samples
    for sample in samples:
        others = generator.render_contours(sample.meta.contours[1:])
        assert not label_contact(sample.label, others, distance=3)
        # Different contours never share ink either.
        assert not ((others >= 128) & (sample.label > 0)).any()


def test_legacy_quirks_reproduce_the_original_contacts():
    """With the original's three bugs, ink touches the label in ~8 % of PF14 images (5-15 % in
    the reference); the default never does."""
    fixed, legacy = PathfinderGenerator(PF14), PathfinderGenerator(preset(14, legacy_quirks=True))
    contacts = {"fixed": 0, "legacy": 0}
    for index in range(120):
        for name, generator in (("fixed", fixed), ("legacy", legacy)):
            sample = generator.sample(3, index)
            others = generator.render_contours(sample.meta.contours[1:])
            contacts[name] += label_contact(sample.label, others)
    assert contacts["fixed"] == 0
    assert 3 <= contacts["legacy"] <= 30


def test_incremental_fields_equal_full_canvas_computation():
    generator = PathfinderGenerator(preset(9))
    for index in range(5):
        fields = generator.sample(1, index, return_fields=True).fields
        full = cv2.dilate(fields["M"], disk_kernel(3))
        inner = (slice(3, -3), slice(3, -3))
        assert np.array_equal(full[inner], fields["D"][inner])
        assert fields["M"].max() <= 1.0 and fields["M"].min() >= 0.0


@pytest.mark.parametrize("length", [6, 9, 20, 25])
def test_other_presets_keep_the_invariants(length):
    generator = PathfinderGenerator(preset(length))
    frame = _frame_mask()
    for index in range(4 if length < 20 else 2):
        sample = generator.sample(0, index)
        assert (sample.image[sample.label > 0] >= 128).all()
        count = cv2.connectedComponents((sample.label > 0).astype(np.uint8), connectivity=8)[0] - 1
        assert count == length
        assert not sample.image[frame].any()
        assert all(d.length == length // 3 for d in sample.meta.distractors)


# ------------------------------------------------------------------------------- determinism
def test_same_seed_and_index_give_the_same_bytes_in_a_fresh_generator():
    first = PathfinderGenerator(PF14).sample(5, 17)
    other = PathfinderGenerator(PF14)
    other.sample(5, 3)  # state left over from another sample must not matter
    second = other.sample(5, 17)
    assert first.image.tobytes() == second.image.tobytes()
    assert first.label.tobytes() == second.label.tobytes()
    assert generate_sample(PF14, 5, 17).image.tobytes() == first.image.tobytes()
    assert not np.array_equal(PathfinderGenerator(PF14).sample(6, 17).image, first.image)
    assert not np.array_equal(PathfinderGenerator(PF14).sample(5, 18).image, first.image)


def test_negative_seed_or_index_is_rejected():
    with pytest.raises(ValueError, match="seed and index must be >= 0"):
        PathfinderGenerator(PF14).sample(-1, 0)


# ------------------------------------------------------------------------------- turn law
def _turn_contours(params, num, seed=5):
    generator = PathfinderGenerator(params)
    contours = []
    for index in range(num):
        contours.extend(generator.sample(seed, index).meta.contours[:2])
    return generator, contours


def test_turn_angles_follow_the_cos2_law_exactly_on_a_free_canvas():
    """Randomised PIT values of every turn under p(delta) ~ cos^2(1.8 delta) over the candidate
    directions are Uniform(0, 1); the moments match the analytic law (14.9 deg, 18.1 deg)."""
    params = preset(14, canvas_size=1000, num_distractors=0)
    generator, contours = _turn_contours(params, 100)
    pit = turn_pit_values(contours, generator.bank.directions, 1.8, np.random.default_rng(0))
    assert len(pit) == 100 * 2 * 13
    assert ks_uniform(pit) < 1.95 / math.sqrt(len(pit))  # KS test at alpha = 0.001
    turns = np.degrees(np.concatenate([c.turns for c in contours]))
    law_mean, law_sd = turn_law_moments(1.8)
    assert abs(law_mean - 14.87) < 0.05 and abs(law_sd - 18.08) < 0.05
    assert abs(np.abs(turns).mean() - law_mean) < 0.8
    assert abs(turns.std() - law_sd) < 1.0
    assert abs(turns.mean()) < 1.0


def test_turn_law_test_rejects_a_wrong_continuity():
    """The PIT test above can fail: turns drawn with continuity 1.2 are rejected."""
    params = preset(14, canvas_size=1000, num_distractors=0, continuity=1.2)
    generator, contours = _turn_contours(params, 40)
    pit = turn_pit_values(contours, generator.bank.directions, 1.8, np.random.default_rng(0))
    assert ks_uniform(pit) > 1.95 / math.sqrt(len(pit))


def test_turn_moments_on_the_crowded_canvas_stay_near_the_law(pf14_samples):
    """On the real 300-px canvas collisions and the pair's rejection widen turns slightly
    (reference: about +0.3 deg on the mean)."""
    _, samples = pf14_samples
    turns = np.degrees(np.concatenate([c.turns for s in samples for c in s.meta.contours]))
    assert 14.4 <= np.abs(turns).mean() <= 16.5
    assert 17.5 <= turns.std() <= 20.0
    assert abs(turns.mean()) < 1.5
