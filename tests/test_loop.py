"""loop.py: the focus loop's rules with scripted networks (as good as their error model, blind to the
side, beyond the trained range), stage limits, bad frames and blank fields, and on the virtual microscope."""
import math
from dataclasses import replace

import numpy as np
import pytest

from autofocuskit.error_model import ErrorModel
from autofocuskit.loop import (BRACKET_SPAN, FocusPosterior, FocusSettings, best_place, confirmation_weight,
                               focus_candidates, focus_loop, next_place, probability_in_focus)
from autofocuskit.optics import VirtualMicroscope
from autofocuskit.predictor import FocusError, FocusEstimate, FocusPredictor
from autofocuskit.schema import depth_of_field_um
from autofocuskit.sharpness import SharpnessCurve
from focus import claims_bound

SHARP = ErrorModel(floor=0.3, gain=1.0, sigma0=0.3, sigma_slope=0.02, saturation=50.0, side_max=0.95,
                   side_reach=1.0, validation_images=1000, field_spread=0.1)


class ScriptedNetwork:
    """A network as its error model says: it reads sqrt(d^2 + floor^2), capped at `saturation`,
    long by the field's own `field_offset` (at the middle of the range, in proportion elsewhere), from 16 tiles spread by `tile_spread`; the side right
    unless `sides` says otherwise (a signed head's, or a split head's p_positive when
    `p_positive` is given)."""

    def __init__(self, stage, sides=(), error_model=SHARP, p_positive=None, tile_spread=0.3, field_offset=0.0):
        self.stage, self.sides, self.error_model = stage, iter(sides), error_model
        self.dof_um = None  # the loop takes the sharpness curve's width from the error model's floor
        self.p_positive, self.tile_spread, self.field_offset = p_positive, tile_spread, field_offset

    def predict(self, frame):
        if frame is None:
            return FocusEstimate(math.nan, "no_sample", math.nan, None, math.nan, 0, 16)
        true = self.stage["z"]
        model = self.error_model
        distance = float(model.mean_distance(np.array(abs(true)))) * (1 + self.field_offset / model.field_scale())
        side = math.copysign(1, true) * (1 if next(self.sides, True) else -1)
        return FocusEstimate(side * distance, "ok", distance, self.p_positive, self.tile_spread, 16, 16, "",
                             self.tile_spread)


def scripted_loop(start, network=None, **options):
    stage = {"z": start}

    def move_by(delta):
        stage["z"] += delta
    network = network(stage) if network else ScriptedNetwork(stage)
    result = focus_loop(lambda: stage, move_by, network, **options)
    return result, stage["z"]


def test_a_network_as_good_as_its_error_model_says_focuses_with_one_move():
    result, end = scripted_loop(10.0, tolerance_um=1.0)
    assert result.images == 2 and result.converged and result.stop_reason == "within_tolerance"
    assert abs(result.moves_um[0] + 10.0) < 0.5 and abs(end) <= 1.0 and result.p_in_focus >= 0.8


def test_a_start_in_focus_takes_one_image():
    result, end = scripted_loop(0.2, tolerance_um=1.0)
    assert result.images == 1 and result.converged and abs(end) <= 1.0


def test_a_field_focused_before_is_known_and_a_start_near_focus_takes_one_image():
    """A field that reads 40 % long (twice the offsets' spread): near focus, a first look cannot
    tell that from 1 um of defocus and takes a second image; once a loop has focused that
    field (ending 0.2 um out), the next one, starting 0.6 um out, knows how it reads and stops after one."""
    model = replace(SHARP, field_spread=5.0)

    def reads_long(stage):
        return ScriptedNetwork(stage, error_model=model, field_offset=10.0)
    first, end = scripted_loop(10.0, reads_long, tolerance_um=1.0)
    assert first.converged and abs(end) <= 1.0
    fresh, _ = scripted_loop(end + 0.4, reads_long, tolerance_um=1.0, prior_sd_um=1.0)
    known, end = scripted_loop(end + 0.4, reads_long, tolerance_um=1.0, prior_sd_um=1.0,
                               field_log_prior=first.field_log_posterior)
    assert fresh.images == 2 and known.images == 1 and known.converged and abs(end) <= 1.0
    with pytest.raises(ValueError, match="field_log_prior has 3 values"):
        scripted_loop(0.0, reads_long, tolerance_um=1.0, field_log_prior=np.zeros(3))


def test_a_wrong_side_is_undone_when_the_blur_grows():
    """The side is wrong at the first frame: the move doubles the blur, and the loop comes back by both."""
    result, end = scripted_loop(10.0, lambda stage: ScriptedNetwork(stage, sides=[False]), tolerance_um=1.0)
    assert result.moves_um[0] == pytest.approx(10.0, abs=0.5) and result.converged and abs(end) <= 1.0
    assert result.images == 3


def test_beyond_the_trained_range_the_loop_still_comes_in_bounded_by_the_largest_step():
    saturating = replace(SHARP, saturation=12.0)
    result, end = scripted_loop(40.0, lambda stage: ScriptedNetwork(stage, error_model=saturating), tolerance_um=1.0,
                                max_images=8, max_step_um=15.0)
    assert all(abs(move) <= 15.0 for move in result.moves_um) and result.moves_um[0] < 0
    assert result.converged and abs(end) <= 1.0 + 1e-9


def test_a_network_blind_to_the_side_tries_one_and_turns_back_when_wrong():
    result, end = scripted_loop(-6.0, lambda stage: ScriptedNetwork(stage, p_positive=0.5), tolerance_um=1.0)
    assert result.converged and abs(end) <= 1.0 and result.images <= 3


# a 40x/0.75 network without a side cue (DOF 1.19 um), as its validation split measured it
BLIND_40X = ErrorModel(floor=0.358, gain=1.02, sigma0=0.315, sigma_slope=0.082, saturation=5.97, side_max=0.538,
                       side_reach=0.358, validation_images=32, field_spread=0.569, sharpness_width=1.266,
                       sharpness_center=0.063, sharpness_spread=0.0145, sharpness_depth=1.075,
                       sharpness_depth_spread=0.317, validation_fields=4)


def test_a_frame_that_a_long_move_brought_near_focus_is_bracketed_onward():
    """Frames of that network's loop on the demo optics (um from the start: distance read,
    p_positive, tiles, their spread, log sharpness): 4.7 DOF out, it went the wrong way, then
    8 DOF back, landing 0.3 DOF short of focus. Near focus it reads its floor, and the belief is
    centred on the frame: the bracket goes on in the direction of the move, across focus, where
    it had gone back towards the earlier frames. Over 180 loops from within 6 DOF on the demo
    40x optics this takes 6 of the loops that took five images to four, and none to more."""
    frames = [(0.0, 5.1009, 0.4486, 16, 0.7164, 3.8545), (4.4196, 5.8739, 0.4415, 16, 0.2972, 3.8354),
              (-5.136, 0.4858, 0.4907, 16, 0.0894, 4.4008)]
    posterior = FocusPosterior(BLIND_40X, 42.0, 0.6, BLIND_40X.sharpness_curve())
    for here, distance, p_positive, tiles, spread, sharpness in frames:
        posterior.add_frame(FocusEstimate(-distance, "ok", distance, p_positive, spread, tiles, tiles, "", spread,
                                          sharpness), here)
    assert posterior.bracket(-5.136) == pytest.approx(-5.136 - BRACKET_SPAN * 1.266)


# a 20x/0.7 split head with the chromatic cue (DOF 1.59 um), trained to 5 DOF on 24 fields, as its validation split measured it
TWENTY_X_CUE = ErrorModel(floor=0.397, gain=1.02, sigma0=0.503, sigma_slope=0.0446, saturation=7.934, side_max=0.971,
                          side_reach=0.317, validation_images=32, field_spread=0.556, sharpness_width=1.812,
                          sharpness_center=0.091, sharpness_spread=0.025, sharpness_depth=2.154,
                          sharpness_depth_spread=0.275, validation_fields=4)


def test_far_out_a_side_read_wrong_is_turned_back_by_the_second_frames_growing_blur():
    """Frames of that network's loop on the demo optics, 6 DOF below focus (um from the start:
    distance read, p_positive, tiles, their spread, log sharpness): it read the side wrong,
    sure of it, and the stage went 4.4 DOF the wrong way; there it read its ceiling, the wrong
    side again. Beyond the trained range neither reading tells which way focus lies, and the
    loop went on away from it (which way it went hung on a thousandth); the second frame is the
    blurrier, so focus lies beyond the first, several times likelier than beyond the second."""
    frames = [(0.0, 8.3014, 0.9587, 16, 0.7866, 3.7366), (-6.9818, 9.1300, 0.9950, 16, 0.6030, 3.6700)]
    posterior = FocusPosterior(TWENTY_X_CUE, 7 * TWENTY_X_CUE.saturation, 0.79, TWENTY_X_CUE.sharpness_curve())
    for here, distance, p_positive, tiles, spread, sharpness in frames:
        posterior.add_frame(FocusEstimate(-distance, "ok", distance, p_positive, spread, tiles, tiles, "", spread,
                                          sharpness), here)
    in_focus = posterior.in_focus()
    beyond_the_first, beyond_the_second = in_focus[posterior.candidates > 0], in_focus[posterior.candidates < -7]
    assert beyond_the_first.max() > 3 * beyond_the_second.max()
    target, _, _ = best_place(posterior, in_focus, -6.9818, FocusSettings(tolerance_um=0.79))
    assert 5.0 < target < 9.5


def test_with_the_images_used_up_the_stage_stands_where_focus_is_most_likely():
    """One frame, 10 um from focus with the side known: the place computed from it is far likelier
    in focus than where it was taken, so the stage goes there, though nothing checks it."""
    result, end = scripted_loop(10.0, tolerance_um=1.0, max_images=1)
    assert result.stop_reason == "images_used_up" and not result.converged and abs(end) <= 1.0


def test_no_sample_moves_nothing(soaf_onnx):
    blank = VirtualMicroscope(10, 0.3, size=448, empty=True).acquire()
    moves = []
    result = focus_loop(lambda: blank, moves.append, FocusPredictor(soaf_onnx), tolerance_um=1.0)
    assert result.estimates[0].status == "no_sample" and moves == [] and result.images == 1
    assert result.stop_reason == "no_sample" and not result.converged
    assert "tiles have content" in result.estimates[0].reason and "fewer than min_tiles 3" in result.estimates[0].reason


def test_a_bad_frame_raises_before_any_move(soaf_onnx):
    moves = []
    with pytest.raises(FocusError):
        focus_loop(lambda: np.zeros((10, 10), np.uint8), moves.append, FocusPredictor(soaf_onnx), tolerance_um=1.0)
    assert moves == []


@pytest.mark.slow
def test_closed_loop_focuses_the_virtual_microscope(trained_split_run):
    """The split-head network trained in the tests, on whole frames of fields it never saw: from
    starts within +-4 DOF, most trials end within one DOF of focus after at most three images."""
    (onnx_path,) = (trained_split_run / ".onnx").glob("*.onnx")
    predictor = FocusPredictor(onnx_path)
    dof_um = depth_of_field_um(10, 0.3)
    ends = []
    for trial, start_dof in enumerate((-4.0, -2.5, -1.5, 1.5, 2.5, 4.0)):
        scope = VirtualMicroscope(10, 0.3, size=512, defocus_um=start_dof * dof_um, seed=100 + trial)
        focus_loop(scope.acquire, scope.move_by, predictor, tolerance_um=0.5 * dof_um, max_images=3)
        ends.append(scope.defocus_um / dof_um)
    print("ends in DOF:", [round(end, 2) for end in ends])
    assert sum(abs(end) <= 1 for end in ends) >= 4, ends


def test_no_move_leaves_the_stage_range_and_focus_beyond_it_stops_at_the_limit():
    """Focus 40 um below, the range ends 25 um below: down to the limit, then stop there."""
    stage = {"z": 40.0}
    visited = []

    def move_by(delta):
        stage["z"] += delta
        visited.append(stage["z"])
    result = focus_loop(lambda: stage, move_by, ScriptedNetwork(stage), tolerance_um=1.0, max_images=8,
                        max_step_um=10.0, z_range_um=(15.0, 100.0), z_um=lambda: stage["z"])
    assert min(visited) == 15.0 and stage["z"] == 15.0 and result.at_limit and result.stop_reason == "at_limit"
    assert not result.converged and result.moved_um == -25.0


def test_a_start_outside_the_range_moves_nothing():
    stage = {"z": 5.0}
    moves = []
    with pytest.raises(FocusError, match="outside z_range_um"):
        focus_loop(lambda: stage, moves.append, ScriptedNetwork(stage), tolerance_um=1.0,
                   z_range_um=(10.0, 20.0), z_um=lambda: stage["z"])
    assert moves == []




WEAK = ErrorModel(floor=1.0, gain=1.0, sigma0=0.45, sigma_slope=0.1, saturation=15.0, side_max=0.75,
                  side_reach=3.0, validation_images=500, field_spread=0.7)


class FirstNetwork:
    """A user's first network, in DOF (1 um): a floor of 1 DOF at focus, each field 0.7 DOF long
    or short, the side a coin flip within 2 DOF; the frames' sharpness from the dip of depth 1.5
    and width 1 DOF unless `sharpness` is False."""

    def __init__(self, stage, rng, sharpness=True):
        self.stage, self.rng, self.sharpness, self.error_model, self.dof_um = stage, rng, sharpness, WEAK, 1.0
        self.offset, self.level = rng.choice([-0.7, 0.7]), rng.normal(5, 1)

    def predict(self, frame):
        true = self.stage["z"]
        distance = max(0.05, float(WEAK.mean_distance(np.array(abs(true)))) + self.offset + self.rng.normal(0, 0.15))
        side = math.copysign(1, true) * (1 if self.rng.random() < (0.5 if abs(true) < 2 else 0.9) else -1)
        sharp = self.level - 1.5 * true**2 / (1 + true**2) + self.rng.normal(0, 0.03)
        return FocusEstimate(side * distance, "ok", distance, None, 0.45, 16, 16, "", 0.45,
                             sharp if self.sharpness else math.nan)


def loop_trials(network, rng, trials: int = 60):
    """Trials from within 6 DOF, tolerance 0.5 DOF, of `network(stage, rng)`, the starts drawn
    from `rng`: (images, |end|, converged, p_in_focus)."""
    rows = []
    for _ in range(trials):
        result, end = scripted_loop(rng.uniform(-6, 6), lambda stage: network(stage, rng), tolerance_um=0.5,
                                    max_images=5)
        rows.append((result.images, abs(end), result.converged, result.p_in_focus))
    return (np.array(column) for column in zip(*rows))


def first_network_trials(sharpness: bool):
    """loop_trials of a first network whose error model is too kind (it says fields differ by
    0.2 DOF; they differ by 0.7)."""
    def network(stage, rng):
        first = FirstNetwork(stage, rng, sharpness)
        first.error_model = replace(WEAK, field_spread=0.2)
        return first
    return loop_trials(network, np.random.default_rng(0))


def test_with_the_frames_sharpness_the_loops_claims_hold_on_a_network_its_error_model_flatters():
    """Near focus this network reads its floor whatever the distance, and its error model is too
    kind: the network alone stops claiming more than it delivers. The sharpness of a frame
    beside the place it would stop checks the claim. These 60 trials: with it, 54 stopped as in
    focus claiming 0.97 and 52 were (3.88 images on average); without, 50 claimed 0.95 and 5
    were (2.80 images)."""
    images, ends, converged, claimed = first_network_trials(sharpness=True)
    assert np.mean(ends[converged] <= 0.5) >= claims_bound(claimed[converged]) and np.mean(ends <= 0.5) >= 0.9
    images, ends, converged, claimed = first_network_trials(sharpness=False)
    assert np.mean(ends[converged] <= 0.5) < claims_bound(claimed[converged])


# reads 0.2 DOF at focus, one image spread by 0.3: within half a DOF its reading changes by 0.34,
# 0.88 of its spread as far as the 20 held-out fields leave it plausible (ErrorModel.resolution)
NEARLY_RESOLVES = ErrorModel(floor=0.2, gain=1.0, sigma0=0.3, sigma_slope=0.05, saturation=15.0, side_max=0.9,
                             side_reach=2.0, validation_images=160, field_spread=0.2, validation_fields=20)


class NearlyResolvingNetwork(FirstNetwork):
    """A network as NEARLY_RESOLVES says, in DOF: each field long or short by 0.2 DOF at mid-range."""

    def __init__(self, stage, rng):
        super().__init__(stage, rng)
        self.error_model, self.offset = NEARLY_RESOLVES, rng.normal(0, 0.2)

    def predict(self, frame):
        true, model = self.stage["z"], NEARLY_RESOLVES
        distance = float(model.mean_distance(np.array(abs(true)))) * (1 + self.offset / model.field_scale())
        distance = max(0.05, distance + self.rng.normal(0, 0.3))
        right = self.rng.random() < float(model.side_accuracy(np.array(abs(true))))
        sharp = self.level - 1.5 * true**2 / (1 + true**2) + self.rng.normal(0, 0.03)
        return FocusEstimate(math.copysign(distance, true if right else -true), "ok", distance, None, 0.3, 16, 16,
                             "", 0.3, sharp)


def test_a_network_that_nearly_resolves_the_tolerance_confirms_its_stops_along_with_the_sharpness(monkeypatch):
    """Its evidence counts in the stop's confirmation as far as it resolves (0.88: a weight of
    0.58; one that resolves at most half of it, none). These 60 trials: 2.33 images on average,
    63 % by two, claims of 0.99 of which 0.97 held; with the sharpness alone confirming, 3.63
    images and none by two."""
    assert confirmation_weight(0.3) == confirmation_weight(0.5) == 0.0 and confirmation_weight(1.4) == 1.0
    assert 0.5 < confirmation_weight(NEARLY_RESOLVES.resolution(0.5)) < 0.6
    images, ends, converged, claimed = loop_trials(NearlyResolvingNetwork, np.random.default_rng(0))
    assert np.mean(ends[converged] <= 0.5) >= claims_bound(claimed[converged]) and np.mean(ends <= 0.5) >= 0.9
    monkeypatch.setattr("autofocuskit.loop.confirmation_weight", lambda resolution: 0.0)  # the sharpness alone
    images_by_sharpness, *_ = loop_trials(NearlyResolvingNetwork, np.random.default_rng(0))
    assert images.mean() <= images_by_sharpness.mean() - 0.8


def test_a_network_that_cannot_focus_never_leaves_the_stage_blurrier_than_found():
    """It reads far whatever the truth. A loop that stops as in focus has it from the frames'
    sharpness and is; one that does not ends at the sharpest place it imaged: no blurrier than
    the start, but for the sharpness's noise (0.03 in log, about 0.1 DOF near focus)."""
    rng = np.random.default_rng(1)

    class Lost(FirstNetwork):
        def predict(self, frame):
            estimate = super().predict(frame)
            far = rng.uniform(5, 12)
            return replace(estimate, defocus_um=far * rng.choice([-1, 1]), distance_um=far)

    converged = 0
    for _ in range(20):
        start = rng.uniform(-3, 3)
        result, end = scripted_loop(start, lambda stage: Lost(stage, rng), tolerance_um=0.5, max_images=4)
        converged += result.converged
        assert abs(end) <= 0.5 if result.converged else abs(end) <= abs(start) + 0.1
    assert converged <= 5  # the network's readings keep most loops from claiming focus


def focused_field():
    """A field 4 DOF out, focused by the first network: (its stage, a function that runs another
    loop there with focus_loop's options, the result of the loop that left it in focus). The
    first loop stops 0.36 DOF out, unimaged, 0.42 DOF beyond its sharpest frame; the next one's
    frame there is blurrier than that frame, so it takes a second and stands 0.06 DOF out."""
    rng = np.random.default_rng(3)
    stage = {"z": 4.0}
    network = FirstNetwork(stage, rng)

    def move_by(delta):
        stage["z"] += delta

    def loop(**options):
        return focus_loop(lambda: None, move_by, network, tolerance_um=0.5, max_images=5, **options)
    return stage, loop, loop(**seen_before(loop()))


def seen_before(result) -> dict:
    """What a later loop on the field is given of `result`, as the engine gives it."""
    return {"prior_sd_um": 0.5, "field_log_prior": result.field_log_posterior,
            "sharpness_before": result.sharpness_seen}


def test_a_field_focused_before_takes_one_image_by_its_sharpness_unless_it_drifted():
    """The first network at a later time point: the earlier loop's frames of the field say how
    sharp it looks in focus, so a start still in focus takes one image; a field that drifted by
    1.5 DOF looks blurrier and takes more."""
    stage, loop, first = focused_field()
    assert first.converged and abs(stage["z"]) <= 0.5 and len(first.sharpness_seen) >= 2
    again = loop(**seen_before(first))
    assert again.converged and again.images == 1 and abs(stage["z"]) <= 0.5
    stage["z"] += 1.5
    drifted = loop(**seen_before(first))
    assert drifted.images >= 2 and abs(stage["z"]) <= 0.5


def test_a_field_that_drifted_about_a_dof_is_found_again_and_no_claim_fails():
    """Fields focused once by the first network, then drifted 0.5-1 DOF either way: the earlier
    frames tell how sharp each field looks in focus, not where its focus is now, so a later loop
    neither takes the blurrier start for focus nor goes the wrong way and claims it. Seed 6: all
    12 claimed focus and were within 0.5 DOF (2.25 images); with the earlier frames held where
    focus was, 8 of 10 claimed and 6 of those 8 ended 0.53-0.71 DOF out."""
    rng = np.random.default_rng(6)
    claims_held, images = [], []
    for _ in range(12):
        stage = {"z": rng.uniform(-3, 3)}
        network = FirstNetwork(stage, rng)

        def move_by(delta):
            stage["z"] += delta

        def loop(**options):
            return focus_loop(lambda: None, move_by, network, tolerance_um=0.5, max_images=5, **options)
        first = loop()
        if not first.converged:
            continue
        stage["z"] += rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
        later = loop(**seen_before(first))
        images.append(later.images)
        if later.converged:
            claims_held.append(abs(stage["z"]) <= 0.5)
    assert len(claims_held) >= 0.8 * len(images) >= 8 and all(claims_held)
    assert np.mean(images) <= 3


def test_fields_drifting_about_the_tolerance_at_every_time_point_are_found_again_near_where_they_lie():
    """40 fields focused once by the first network, then drifting 0.3-0.5 DOF either way before
    each of three later loops: a loop passes the earlier frames on moved by the drift the frames
    show, so that later loops do not read frames of two foci as one. Seed 1, the third and fourth
    loops: 1.56 images, the stage never beyond 1.57 DOF of focus, 78 of 80 ended within the
    tolerance, as did all 78 that claimed it (0.976 claimed); with the frames passed on as they
    were where a loop moved less than the tolerance, 1.86 images, one loop to 2.64 DOF, 77 of 80."""
    rng = np.random.default_rng(1)
    images, furthest, ends, claims = [], [], [], []
    for _ in range(40):
        stage = {"z": rng.uniform(-3, 3), "furthest": 0.0}
        network = FirstNetwork(stage, rng)

        def move_by(delta):
            stage["z"] += delta
            stage["furthest"] = max(stage["furthest"], abs(stage["z"]))

        result = focus_loop(lambda: None, move_by, network, tolerance_um=0.5, max_images=5)
        for time_point in range(3):
            stage["z"] += rng.choice([-1, 1]) * rng.uniform(0.3, 0.5)
            stage["furthest"] = abs(stage["z"])
            result = focus_loop(lambda: None, move_by, network, tolerance_um=0.5, max_images=5,
                                **seen_before(result))
            if time_point >= 1:
                images.append(result.images)
                furthest.append(stage["furthest"])
                ends.append(abs(stage["z"]))
                if result.converged:
                    claims.append((result.p_in_focus, abs(stage["z"]) <= 0.5))
    assert np.mean(images) <= 1.7 and max(furthest) <= 2.0 and np.mean(np.array(ends) <= 0.5) >= 0.95
    claimed, held = np.array(claims).T
    assert held.mean() >= claims_bound(claimed)


def test_focus_just_beyond_the_tolerance_is_not_counted_in_focus_however_coarse_the_candidates():
    """Candidates 0.14 apart about a tolerance of 0.5: counted whole, the candidate 0.56 away
    would count as within it (and a flat belief 1.26 in place of 1.0 of its width)."""
    candidates = focus_candidates(105.0, 0.5)
    centre = int(np.argmin(np.abs(candidates)))
    beyond = probability_in_focus(-0.5 * ((candidates - 0.6) / 0.03) ** 2, candidates, 0.5)
    flat = probability_in_focus(np.zeros(len(candidates)), candidates, 0.5)
    assert candidates[1] - candidates[0] > 0.5 / 4 and beyond[centre] < 0.1 and beyond.max() > 0.99
    assert flat[centre] == pytest.approx(1.0 / (len(candidates) * (candidates[1] - candidates[0])))


def test_a_field_that_stays_in_focus_takes_one_image_at_every_later_time_point():
    stage, loop, result = focused_field()
    images = []
    for _ in range(4):
        result = loop(**seen_before(result))
        images.append(result.images)
    assert images == [1, 1, 1, 1] and abs(stage["z"]) <= 0.5


def test_a_tolerance_finer_than_the_loop_can_resolve_stops_early_and_says_so():
    """A twentieth of a DOF, on a first network and its frames' sharpness (noise 0.03 in log):
    some loops find that the frames they have left, gaining what their last three did, cannot
    make them sure, stop before the images run out and end where the frames were sharpest; at
    half a DOF none stops so."""
    rng = np.random.default_rng(3)
    reasons, images = [], []
    for _ in range(12):
        result, end = scripted_loop(rng.uniform(-4, 4), lambda stage: FirstNetwork(stage, rng), tolerance_um=0.05,
                                    max_images=8)
        reasons.append(result.stop_reason)
        if result.stop_reason == "no_surer":
            images.append(result.images)
            assert not result.converged and result.p_in_focus < 0.8 and abs(end) <= 1.5
    assert reasons.count("no_surer") >= 3 and max(images) < 8
    for _ in range(12):
        result, _ = scripted_loop(rng.uniform(-4, 4), lambda stage: FirstNetwork(stage, rng), tolerance_um=0.5,
                                  max_images=8)
        assert result.stop_reason == "within_tolerance"


def test_a_stop_goes_where_the_sharpness_confirms_it_not_to_an_edge_of_where_it_might():
    """Four frames of the 40x network without a cue (docs/focus_loop.md, its misses), focus
    6.19 um below the start: two frames far above focus, then 0.58 DOF above and 0.16 below it.
    The whole belief puts focus within 0.1 DOF; the sharpness alone confirms a stop anywhere
    from -0.4 to +0.2 DOF about alike (0.86). The stop goes where the whole belief is likeliest
    among those places; before, it went to their edge, 0.42 DOF out, where the sharpness
    confirmed 0.75 of the 0.8 asked, and took a fifth image."""
    model = ErrorModel(floor=0.358332, gain=1.02, sigma0=0.315186, sigma_slope=0.082285, saturation=5.9722,
                       side_max=0.538415, side_reach=0.358332, validation_images=32, field_spread=0.568836,
                       sharpness_width=1.265839, sharpness_spread=0.016821, sharpness_depth=1.08036,
                       sharpness_depth_spread=0.370941, validation_fields=4)
    dof = depth_of_field_um(40, 0.75)
    tolerance, focus = 0.5 * dof, -6.1929
    posterior = FocusPosterior(model, 7 * model.saturation, tolerance, model.sharpness_curve())
    frames = [(0.0, 5.0492, 0.4496, 0.3964, 3.8023), (4.4196, 5.5445, 0.4439, 0.3936, 3.7901),
              (-5.4943, 0.4513, 0.4909, 0.1774, 4.4260), (-6.3804, 0.3952, 0.4911, 0.1627, 4.6219)]
    for here, distance, p_positive, spread, sharpness in frames:
        posterior.add_frame(FocusEstimate(-distance, "ok", distance, p_positive, spread, 16, 16, "", spread, sharpness),
                            here)
    settings = FocusSettings.of(tolerance_um=tolerance, max_images=5)
    target, p_in_focus, confirmation = best_place(posterior, posterior.in_focus(), frames[-1][0], settings)
    assert abs(target - focus) <= 0.15 * dof and min(p_in_focus, confirmation) >= 0.8


def test_a_stop_twice_the_tolerance_from_a_frame_counts_however_the_candidates_round():
    """The candidates lie a fifth of the tolerance apart: a target ten of them from the frame is
    twice the tolerance away, though their sum may round a hair beyond it (20x/0.7 here: by 2e-14 um)."""
    dof = depth_of_field_um(20, 0.7)
    settings = FocusSettings.of(tolerance_um=0.5 * dof, max_images=5)
    posterior = FocusPosterior(SHARP, 7 * 7.934, settings.tolerance_um, SharpnessCurve.assumed(dof))
    frame = int(np.argmin(np.abs(posterior.candidates + 4.2 * dof)))
    here, target = posterior.candidates[frame], posterior.candidates[frame - 10]
    posterior.imaged.append(here)
    assert abs(target - here) > 2 * settings.tolerance_um  # the rounding this guards against
    assert next_place(posterior, target, 0.99, 0.99, here, settings) == (target, True)
