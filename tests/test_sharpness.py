"""sharpness.py: the frames' log Brenner falls away from focus on rendered tissue as the dip it
assumes, and the dip's width and peak are measured from fields imaged at several heights; the
evidence is flat for one frame, peaks at the focus the frames show, and does not care how bright
or textured the field is."""
import math

import numpy as np
import pytest

from autofocuskit.imaging import IMAGE_SIZE
from autofocuskit.optics import VirtualMicroscope
from autofocuskit.schema import depth_of_field_um
from autofocuskit.sharpness import SharpnessCurve, SharpnessEvidence, fit_sharpness_curve, log_sharpness


def tiles_of(frame: np.ndarray) -> np.ndarray:
    return np.stack([frame[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE] for y in (0, 224) for x in (0, 224)])


def test_sharpness_falls_away_from_focus_on_either_side_as_the_dip_says():
    dof = depth_of_field_um(20, 0.7)
    scope = VirtualMicroscope(20, 0.7, size=448, seed=2)
    values = {}
    for defocus_dof in (-3, -1, -0.5, 0, 0.5, 1, 3):
        scope.defocus_um = defocus_dof * dof
        values[defocus_dof] = log_sharpness(tiles_of(scope.acquire()))
    assert values[0] == max(values.values())
    for side in (-1, 1):
        assert values[0] > values[0.5 * side] > values[1 * side] > values[3 * side]
        # half the dip's depth is reached near 1 DOF: the width the loop assumes
        assert values[0] - values[1 * side] == pytest.approx((values[0] - values[3 * side]) * 0.5, abs=0.25)
    assert math.isnan(log_sharpness(np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)))


def dip(z: float, focus: float, level: float = 5.0, depth: float = 1.5, width: float = 1.0) -> float:
    u = ((z - focus) / width) ** 2
    return level - depth * u / (1 + u)


def test_the_evidence_is_flat_for_one_frame_and_peaks_where_the_frames_say():
    candidates = np.linspace(-5, 5, 1001)
    evidence = SharpnessEvidence(SharpnessCurve.assumed(1.0))
    evidence.add_frame(0.0, dip(0.0, 1.3))
    assert np.ptp(evidence.log_likelihood(candidates)) == 0
    for z in (2.5, 1.0):
        evidence.add_frame(z, dip(z, 1.3))
    likeliest = candidates[np.argmax(evidence.log_likelihood(candidates))]
    assert likeliest == pytest.approx(1.3, abs=0.2) and evidence.sharpest() == 1.0


def test_the_fields_brightness_cancels():
    candidates = np.linspace(-5, 5, 201)
    dim, bright = SharpnessEvidence(SharpnessCurve.assumed(1.0)), SharpnessEvidence(SharpnessCurve.assumed(1.0))
    for z in (-2.0, 0.5, 1.5):
        dim.add_frame(z, dip(z, 0.8, level=2.0))
        bright.add_frame(z, dip(z, 0.8, level=9.0))
    np.testing.assert_allclose(dim.log_likelihood(candidates), bright.log_likelihood(candidates), atol=1e-9)


def test_the_curve_is_measured_from_fields_each_with_its_own_level_and_depth():
    rng = np.random.default_rng(0)
    labels, values, fields, depths = [], [], [], rng.uniform(0.5, 2.5, 4)
    for field, depth in enumerate(depths):
        level = rng.uniform(2, 9)
        for z in rng.uniform(-5, 5, 8):
            labels.append(z)
            values.append(dip(z, 0.3, level, depth, width=1.6) + rng.normal(0, 0.02))
            fields.append(f"slide/field{field}")
    width, center, spread, depth, depth_spread, tail = fit_sharpness_curve(np.array(labels), np.array(values),
                                                                           np.array(fields))
    assert width == pytest.approx(1.6, rel=0.15) and center == pytest.approx(0.3, abs=0.15)
    assert spread == pytest.approx(0.02, abs=0.015)
    # images that stray no further out than near the peak: the tail as far as their reach can tell
    assert tail >= 2 * 5 / 1.6 * 0.5
    # a field not among them may lie further from the mean depth than they spread
    assert depth == pytest.approx(depths.mean(), rel=0.15) and depth_spread > depths.std(ddof=1)
    # a field seen at fewer than three heights has nothing to fit
    assert fit_sharpness_curve(np.array([0.0, 1.0]), np.array([5.0, 4.0]), np.array(["a", "a"])) is None


def test_how_far_out_images_stray_further_from_the_dip_is_measured():
    """Fields whose curves part from the dip far out (residuals twice as large 1.5 widths out) give a
    short tail, so that the loop counts a far frame for less; fields that follow the dip as far as
    they were imaged, a tail twice their reach (a frame further out than they reached counts less)."""
    rng = np.random.default_rng(2)
    heights = np.linspace(-6, 6, 13)
    for growth, expected, peak_spread in ((1.5, (1.0, 2.5), (0.02, 0.05)), (None, (10.0, 12.0), (0.015, 0.025))):
        labels, values, fields = [], [], []
        for field in range(8):
            noise = 0.02 * (1 + (heights / growth) ** 2 if growth else np.ones_like(heights))
            labels += list(heights)
            values += list(dip(heights, 0.0, rng.uniform(2, 9), rng.uniform(1, 2)) + rng.normal(0, noise))
            fields += [field] * len(heights)
        *_, spread, _, _, tail = fit_sharpness_curve(np.array(labels), np.array(values), np.array(fields))
        # the spread at the peak, not over the tail (0.34 six widths out)
        assert expected[0] <= tail <= expected[1] and peak_spread[0] <= spread <= peak_spread[1]


def test_only_images_near_the_peak_move_the_center_from_the_labels_focus():
    """Where the dip peaks is told by the images within a width of it; flanks alone would place
    it too, but a field's flanks part from the dip's shape, so fields imaged only far from focus
    leave the peak at the labels' focus."""
    rng = np.random.default_rng(1)
    far, near = np.array([-6.0, -4.5, -3.0, -2.0, -1.6, 1.6, 2.0, 3.0, 4.5, 6.0]), np.array([-0.6, -0.2, 0.4, 0.8])
    for heights, expected in ((np.concatenate([far, near]), 0.4), (far, 0.0)):
        labels, fields = np.tile(heights, 4), np.repeat(np.arange(4), len(heights))
        values = np.concatenate([dip(heights, 0.4, level, depth) + rng.normal(0, 0.01, len(heights))
                                 for depth, level in ((1.5, 3), (2, 5), (2.5, 4), (1.8, 7))])
        width, center, *_ = fit_sharpness_curve(labels, values, fields)
        assert width == pytest.approx(1.0, rel=0.15) and center == pytest.approx(expected, abs=0.05)


def test_the_measured_width_on_rendered_tissue_is_about_one_dof():
    dof = depth_of_field_um(40, 0.75)
    labels, values, fields = [], [], []
    for seed in range(3):
        scope = VirtualMicroscope(40, 0.75, size=224, seed=seed)
        for defocus_dof in (-4, -2, -1, -0.5, 0, 0.5, 1, 2, 4):
            scope.defocus_um = defocus_dof * dof
            labels.append(scope.defocus_um)
            values.append(log_sharpness(scope.acquire()[None]))
            fields.append(seed)
    width, center, *_ = fit_sharpness_curve(np.array(labels), np.array(values), np.array(fields))
    assert width / dof == pytest.approx(1.0, abs=0.3) and abs(center) < 0.25 * dof


def test_a_measured_curve_pins_focus_from_frames_on_one_flank_that_an_assumed_one_cannot():
    """Frames beside focus on one side fit a narrower dip nearer them about as well as the true
    one: weighing the widths the DOF allows leaves focus open, the measured width does not."""
    candidates = np.linspace(-3, 3, 601)
    assumed = SharpnessEvidence(SharpnessCurve.assumed(1.0))
    measured = SharpnessEvidence(SharpnessCurve(1.0, spread=0.03, measured=True))
    for z in (-2.3, 1.1, 1.8):
        for evidence in (assumed, measured):
            evidence.add_frame(z, dip(z, 0.0, depth=2.8))

    def in_tolerance(evidence):
        log_likelihood = evidence.log_likelihood(candidates)
        weights = np.exp(log_likelihood - log_likelihood.max())
        return weights[np.abs(candidates) <= 0.5].sum() / weights.sum()

    assert in_tolerance(measured) > 0.9 > in_tolerance(assumed)


def test_a_likely_depth_tells_from_two_frames_how_far_the_nearer_lies_from_focus():
    """One frame far out, one 1.2 widths from focus: any depth fits two frames, but the depths
    fields are measured to have rule out focus where the nearer frame stands, which the assumed
    spread of depths (2 +- 1) leaves open."""
    candidates = np.linspace(-2, 2.5, 451)

    def near_the_frame(curve):
        evidence = SharpnessEvidence(curve)
        for z in (4.5, 1.2):
            evidence.add_frame(z, dip(z, 0.0, depth=2.0))
        log_likelihood = evidence.log_likelihood(candidates)
        weights = np.exp(log_likelihood - log_likelihood.max())
        return weights[np.abs(candidates - 1.2) <= 0.5].sum() / weights.sum()

    assert near_the_frame(SharpnessCurve(1.0, spread=0.03, depth=2.0, depth_spread=0.3, measured=True)) < 0.01
    assert near_the_frame(SharpnessCurve(1.0, spread=0.03, measured=True)) > 0.1


def test_frames_far_out_count_as_far_as_the_held_out_images_followed_the_dip_there():
    """A loop whose first move went the wrong way: two frames far out (6 and 10 widths), then two
    near focus, one each side. Where the held-out images were measured to follow the dip to 6
    widths (a tail of 13), the far frames tell the field's level far out and with it how deep
    its dip is, and the two near frames place focus within the tolerance; assumed to part from
    the dip there (3 widths), they count for little and focus stays open."""
    candidates = np.linspace(-8, 8, 1601)

    def in_tolerance(tail_widths: float) -> float:
        evidence = SharpnessEvidence(SharpnessCurve(1.0, spread=0.03, depth=1.3, depth_spread=0.36,
                                                    tail_widths=tail_widths, measured=True))
        for z in (5.8, 10.0, 1.27, -0.13):
            evidence.add_frame(z, dip(z, 0.0, depth=1.3))
        log_likelihood = evidence.log_likelihood(candidates)
        weights = np.exp(log_likelihood - log_likelihood.max())
        return weights[np.abs(candidates) <= 0.5].sum() / weights.sum()

    assert in_tolerance(13.0) > 0.9 and in_tolerance(3.0) < 0.8


def test_far_out_on_one_flank_the_sharper_frame_is_the_side_focus_lies_on():
    """Two frames of rendered tissue 5.8 and 10.3 DOF from focus, where the dip is all but flat
    and its fit tells little: the sharper one is nearer focus, so focus 5.8 DOF beyond it is
    likelier than 5.8 DOF beyond the blurrier one, by the order of the two alone. Near focus
    the order counts for nothing: there the dip's fit tells where focus is."""
    dof = depth_of_field_um(20, 0.7)
    scope = VirtualMicroscope(20, 0.7, size=448, seed=4)
    curve = SharpnessCurve(1.15 * dof, spread=0.03, depth=2.1, depth_spread=0.3, measured=True)
    evidence = SharpnessEvidence(curve)
    for z in (0.0, -4.5 * dof):
        scope.defocus_um = z - 5.8 * dof
        evidence.add_frame(z, log_sharpness(tiles_of(scope.acquire())))
    candidates = np.array([5.8, -10.3]) * dof
    order = evidence.order_log_likelihood(candidates)
    assert order[0] - order[1] > 1.0 and np.diff(evidence.log_likelihood(candidates))[0] < -1.0
    near = SharpnessEvidence(curve)
    for z in (-0.5 * dof, 0.3 * dof):
        near.add_frame(z, dip(z, 0.0, depth=2.1, width=curve.width_um))
    assert np.abs(near.order_log_likelihood(np.linspace(-1, 1, 21) * dof)).max() < 0.1


def test_an_earlier_loops_frames_tell_how_sharp_focus_looks_not_where_it_is_after_a_drift():
    """Frames an earlier loop took about focus at 0; focus then drifted to +0.8 and this loop's
    frames at 0 and 1.6 lie 0.8 either side of it. Summed over the drift, the evidence peaks at
    the new focus; held where focus was then, no place fits both and it peaks elsewhere. Without
    a drift, a frame at 0 as sharp as then puts focus at 0."""
    candidates = np.arange(-4, 4.001, 0.05)
    curve = SharpnessCurve(1.0, spread=0.03, depth=1.5, depth_spread=0.4, measured=True)
    earlier = [(z, dip(z, 0.0)) for z in (-1.1, 0.4, 1.2)]

    def likeliest(frames, held=False):
        evidence = SharpnessEvidence(curve)
        if held:
            frames = [*earlier, *frames]
        else:
            evidence.add_frames_seen_before(earlier, drift_sd_um=0.5)
        for z, value in frames:
            evidence.add_frame(z, value)
        return candidates[np.argmax(evidence.log_likelihood(candidates))]

    drifted = [(z, dip(z, 0.8)) for z in (0.0, 1.6)]
    assert likeliest(drifted) == pytest.approx(0.8, abs=0.1)
    assert abs(likeliest(drifted, held=True) - 0.8) > 0.2
    assert likeliest([(0.0, dip(0.0, 0.0))]) == pytest.approx(0.0, abs=0.1)


def test_two_frames_of_an_earlier_loop_place_focus_then_near_where_it_stopped():
    """An earlier loop stopped in focus after two frames 0.7 widths apart and almost as sharp (a
    20x demo field); this loop's first frame at its start is as sharp. Two frames fit a focus far
    out on the dip's flat tail about as well as one near them: summed over where focus was then
    without knowing the loop stopped in focus, the evidence put it 2.6 widths away (9 % within
    two widths) and the loop went there; near where that loop left the stage, focus stays near."""
    curve = SharpnessCurve(1.85, spread=0.03, depth=1.91, depth_spread=0.6, tail_widths=8.5, measured=True)
    evidence = SharpnessEvidence(curve)
    evidence.add_frames_seen_before([(0.48, 5.89), (-0.82, 5.765)], drift_sd_um=0.8)
    evidence.add_frame(0.0, 5.825)
    candidates = np.linspace(-60, 60, 1201)
    log_likelihood = evidence.log_likelihood(candidates)
    weights = np.exp(log_likelihood - log_likelihood.max())
    assert weights[np.abs(candidates) <= 2 * curve.width_um].sum() / weights.sum() > 0.5


def test_an_earlier_loops_frames_are_passed_on_moved_by_the_drift_the_frames_show():
    """Frames an earlier loop took about focus at 0; focus drifted to +0.8 and this loop's frames
    at 0 and 1.6 lie either side of it; it ended at 0.8. Passed on, the earlier frames are moved
    by the drift, so that all lie about one focus at the end; without a drift, as they were. One
    frame at 0 tells how far focus drifted, not which way, and a drift too small to show still
    puts it off the earlier frames' focus: the earlier frames alone, as they were."""
    candidates = np.arange(-4, 4.001, 0.05)
    curve = SharpnessCurve(1.0, spread=0.03, depth=1.5, depth_spread=0.4, measured=True)
    earlier = [(z, dip(z, 0.0)) for z in (-1.1, 0.4, 1.2)]

    def passed_on(focus_now, taken_at=(0.0, 1.6), end=None):
        evidence = SharpnessEvidence(curve)
        evidence.add_frames_seen_before(earlier, drift_sd_um=0.5)
        for z in taken_at:
            evidence.add_frame(z, dip(z, focus_now))
        return evidence.drift_shown(candidates), evidence.frames_relative_to(
            focus_now if end is None else end, candidates)

    drift, frames = passed_on(0.8)
    assert drift == pytest.approx(0.8, abs=0.1) and len(frames) == 5
    for z, value in frames:
        assert value == pytest.approx(dip(z, 0.0), abs=0.03)
    drift, frames = passed_on(0.0)
    assert drift == 0.0 and frames[:3] == earlier
    drift, frames = passed_on(0.8, taken_at=(0.0,), end=0.0)
    assert drift is None and frames == earlier
    drift, frames = passed_on(0.3, taken_at=(0.0,), end=0.0)
    assert drift == 0.0 and frames == earlier


def test_frames_that_leave_the_drift_open_are_not_moved_by_a_guess():
    """Frames of a 10x demo field (in sharpness widths): the earlier loop's two on one flank of
    the dip, this loop's two either side of focus. Where focus was then is left open, so the drift
    is: the frames put it at 1.8 widths where it was 0.8. This loop's frames are passed on alone."""
    candidates = np.arange(-6, 6.001, 0.05)
    curve = SharpnessCurve(1.0, spread=0.03, depth=2.06, depth_spread=0.65, measured=True)
    evidence = SharpnessEvidence(curve)
    evidence.add_frames_seen_before([(1.06, 5.227), (0.36, 5.977)], drift_sd_um=0.44)
    evidence.add_frame(0.0, 4.845)
    evidence.add_frame(1.24, 5.945)
    assert evidence.drift_shown(candidates) is None
    assert evidence.frames_relative_to(1.2, candidates) == [(-1.2, 4.845), (1.24 - 1.2, 5.945)]
