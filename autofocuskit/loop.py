"""The focus loop: after every frame, the probability of each candidate focus position given
everything seen so far, from the network's measured error; the stage moves to where focus is
likeliest until it is in focus with the confidence asked for. numpy only.

    from autofocuskit import FocusPredictor, FocusSettings, focus_loop
    result = focus_loop(acquire, move_by, predictor, tolerance_um=1.0, max_images=5)
    settings = FocusSettings(tolerance_um=1.0, z_range_um=(1000, 1400))   # the same, as one object
    result = focus_loop(acquire, move_by, predictor, settings, z_um=read_stage)
"""
import math
import time
from dataclasses import dataclass, field, fields, replace

import numpy as np

from .error_model import ErrorModel
from .imaging import log_sum_exp, student_t_log_density
from .predictor import FocusError, FocusEstimate, FocusPredictor
from .sharpness import SharpnessCurve, SharpnessEvidence, dip

# where the network cannot tell focus from its floor, frames this many sharpness widths (about a
# DOF) apart near the stop: far enough apart that their sharpness differs, near enough to see the dip
BRACKET_SPAN = 0.7
# a frame reached by a move longer than this many widths more often lies short of focus than
# beyond it: networks read short towards the end of their trained range (the demo networks 0.3-0.8
# DOF short at 4.7 DOF on their validation splits); where the sharpness cannot tell, it brackets onward
LONG_MOVE = 2.0
# a stop is confirmed by the sharpness among the places within this many widths of it
NEIGHBOURHOOD = 2.0
# a loop this sure of focus (the probability that its target is in focus, as far as the evidence
# confirms it) may stop early when its frames add too little to reach the confidence ("no_surer")
SETTLED = 0.2
# a network whose ErrorModel.resolution is at most this adds nothing to the frames' sharpness
# where that confirms a stop (confirmation_weight)
SILENT_RESOLUTION = 0.5
# a field focused before may read unlike it did then (the specimen changed, the stage came back
# elsewhere): this much of its offset's prior stays the population's
FIELD_CHANGE = 0.2


@dataclass(frozen=True)
class FocusSettings:
    """How a focus loop runs: one set of defaults for focus_loop, microscope.autofocus, the
    AutofocusEngine and the command lines of focus.py and micromanager.py."""

    tolerance_um: float  # in focus when within this of focus
    max_images: int = 5  # frames per loop at most
    max_step_um: float | None = None  # no single move is larger
    confidence: float = 0.8  # stop when within the tolerance with at least this probability
    z_range_um: tuple[float, float] | None = None  # (low, high), absolute: no move leaves it (needs z_um)

    def __post_init__(self):
        if not (math.isfinite(self.tolerance_um) and self.tolerance_um > 0):
            raise FocusError(f"tolerance_um must be a positive number, got {self.tolerance_um}")
        if int(self.max_images) != self.max_images or self.max_images < 1:
            raise FocusError(f"max_images must be a whole number of at least 1, got {self.max_images}")
        if self.max_step_um is not None and not self.max_step_um > 0:
            raise FocusError(f"max_step_um must be positive, got {self.max_step_um}")
        if not 0 < self.confidence < 1:
            raise FocusError(f"confidence must be a probability between 0 and 1, got {self.confidence}")
        if self.z_range_um is not None:
            low, high = self.z_range_um
            if not low <= high:
                raise FocusError(f"z_range_um must be (low, high) with low <= high, got {self.z_range_um}")
            object.__setattr__(self, "z_range_um", (float(low), float(high)))

    @classmethod
    def of(cls, settings: "FocusSettings | None" = None, **changes) -> "FocusSettings":
        """`settings` with `changes` (keyword arguments named as the fields; None leaves a field
        as it is), or new settings from the changes alone."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown focus setting(s) {unknown}; the settings are {sorted(known)}")
        changes = {name: value for name, value in changes.items() if value is not None}
        if settings is None:
            if "tolerance_um" not in changes:
                raise TypeError("a focus loop needs tolerance_um (or a FocusSettings)")
            return cls(**changes)
        return replace(settings, **changes)


DEFAULTS = FocusSettings(tolerance_um=1.0)  # the defaults the command lines show

# why focus_loop stopped: FocusResult.stop_reason
STOP_REASONS = {
    "within_tolerance": "in focus within the tolerance with the probability asked for",
    "no_sample": "too few tiles with content: no further move",
    "at_limit": "focus lies beyond z_range_um: the stage stopped at the limit, then went where the frames were sharpest",
    "images_used_up": "max_images frames were taken: the stage went where the frames were sharpest",
    "no_surer": "the frames left could not make the loop sure of focus at the pace of the last three: the tolerance "
                "is finer than the network and the frames' sharpness resolve here; the stage went where the frames "
                "were sharpest",
}


@dataclass
class FocusResult:
    converged: bool  # the loop stopped in focus with the confidence asked for
    images: int  # frames acquired
    moves_um: list[float] = field(default_factory=list)
    estimates: list[FocusEstimate] = field(default_factory=list)
    stop_reason: str = "images_used_up"  # a key of STOP_REASONS
    at_limit: bool = False  # a move was cut short at an end of z_range_um
    p_in_focus: float = math.nan  # where it stopped: the probability that focus lies within the tolerance
    # what the frames told of the field's own offset (log weights over the error model's
    # field_offsets): the next loop on the same field starts from it (focus_loop's field_log_prior)
    field_log_posterior: np.ndarray | None = None
    # the frames' sharpness, (z relative to where the loop left the stage, log sharpness), this
    # loop's and the earlier loops' about one focus (SharpnessEvidence.frames_relative_to): the
    # next loop on the same field compares its first frame with them (focus_loop's sharpness_before)
    sharpness_seen: list[tuple[float, float]] = field(default_factory=list)

    @property
    def moved_um(self) -> float:
        """Where the loop left the stage, relative to where it started."""
        return float(sum(self.moves_um))


class FocusPosterior:
    """The loop's belief: log weights over (field offset, focus position relative to the start)
    from the network's readings, and over focus positions from the frames' sharpness (a field
    compared with itself: no field offset), whose shape is `curve`."""

    def __init__(self, model: ErrorModel, reach_um: float, tolerance_um: float, curve: SharpnessCurve,
                 prior_sd_um: float | None = None, field_log_prior: np.ndarray | None = None,
                 sharpness_before=()):
        self.model, self.tolerance_um = model, tolerance_um
        self.candidates = focus_candidates(reach_um, tolerance_um)
        self.sharpness = SharpnessEvidence(curve)
        self.network_weight = confirmation_weight(model.resolution(tolerance_um))
        self.sharpness.add_frames_seen_before(sharpness_before, prior_sd_um or curve.width_um)
        self.imaged: list[float] = []  # where this loop's frames were taken, relative to its start
        self.read_near: list[float] = []  # those of them where the network read focus within NEIGHBOURHOOD widths
        self.offsets, log_prior = model.field_offsets()
        if field_log_prior is not None:
            log_prior = field_seen_before(log_prior, field_log_prior)
        self.log_joint = np.repeat(log_prior[:, None], len(self.candidates), axis=1)
        if prior_sd_um:
            self.log_joint += student_t_log_density(self.candidates / prior_sd_um)
        self.update()

    def add_frame(self, estimate: FocusEstimate, here_um: float) -> None:
        """What a frame taken `here_um` from the start showed."""
        self.log_joint += self.model.log_likelihood(
            estimate.distance_um, estimate.defocus_um, estimate.p_positive, estimate.tiles_used,
            estimate.distance_spread_um, here_um - self.candidates, self.offsets)
        self.imaged.append(here_um)
        if estimate.distance_um <= self.model.mean_distance(np.array(NEIGHBOURHOOD * self.sharpness.width_um)):
            self.read_near.append(here_um)
        self.sharpness.add_frame(here_um, estimate.log_sharpness)
        self.update()

    def update(self) -> None:
        """The belief over focus positions (`log_posterior`): the field offsets summed out, with the sharpness's evidence."""
        self.sharpness_log_likelihood = self.sharpness.log_likelihood(self.candidates)
        self.network_log_likelihood = log_sum_exp(self.log_joint, axis=0)
        self.log_posterior = self.network_log_likelihood + self.sharpness_log_likelihood

    def in_focus(self) -> np.ndarray:
        """For the stage at each candidate, the probability that focus lies within the tolerance."""
        return probability_in_focus(self.log_posterior, self.candidates, self.tolerance_um)

    def near_a_frame(self, target_um: float) -> bool:
        """Whether `target_um` lies within a sharpness width of a place imaged where the network
        read focus near (a network that reads far is not at its floor, whatever the belief says)."""
        return any(abs(target_um - place) <= self.sharpness.width_um for place in self.read_near)

    def sharpness_decides(self) -> bool:
        """Whether near focus the frames' sharpness must tell where focus is: the network cannot
        tell focus from its floor within the tolerance, and the frames have a sharpness."""
        return not self.model.resolves(self.tolerance_um) and bool(self.sharpness.values)

    def sharpness_confirms(self, around_um: float) -> np.ndarray:
        """For a stop at each candidate, the probability that the frames' sharpness, which no
        field offset misleads, puts focus within the tolerance of it, of the places within
        NEIGHBOURHOOD widths of `around_um` (how far out focus lies is the network's to tell);
        the network's own evidence counts as far as it resolves the tolerance (confirmation_weight)."""
        near = np.abs(self.candidates - around_um) <= NEIGHBOURHOOD * self.sharpness.width_um
        evidence = self.sharpness_log_likelihood + self.network_weight * self.network_log_likelihood
        return probability_in_focus(np.where(near, evidence, -np.inf), self.candidates, self.tolerance_um)

    def bracket(self, target_um: float) -> float:
        """A place BRACKET_SPAN widths beside the frame nearest `target_um`: towards the target
        where it lies apart from that frame, so that the two frames straddle it; else, that frame
        the latest and reached by a move of more than LONG_MOVE widths, onward (such a move more
        often lands short of focus than beyond); else on the side where the sharpness it would
        show, against that frame's, differs most between the focus positions still believed (not
        a place imaged already): the frame that tells most of where focus is."""
        nearest = min(self.imaged, key=lambda place: abs(place - target_um))
        step = BRACKET_SPAN * self.sharpness.width_um
        if abs(target_um - nearest) > self.tolerance_um / 4:
            return nearest + math.copysign(step, target_um - nearest)
        sides = [place for place in (nearest - step, nearest + step)
                 if min(abs(place - imaged) for imaged in self.imaged) > self.tolerance_um / 2] or [nearest + step]
        move = self.imaged[-1] - self.imaged[-2] if len(self.imaged) >= 2 and nearest == self.imaged[-1] else 0.0
        onward = nearest + math.copysign(step, move)
        if abs(move) > LONG_MOVE * self.sharpness.width_um and onward in sides:
            return onward
        weights = np.exp(self.log_posterior - self.log_posterior.max())
        weights /= weights.sum()
        peaks = self.candidates + self.sharpness.curve.center_um

        def spread_of_contrast(place: float) -> float:
            contrast = dip(place - peaks, self.sharpness.width_um) - dip(nearest - peaks, self.sharpness.width_um)
            mean = np.sum(weights * contrast)
            return float(np.sum(weights * (contrast - mean) ** 2))

        return max(sides, key=spread_of_contrast)

    def likeliest_beyond(self, here_um: float) -> float:
        """The likeliest focus position more than the tolerance from `here_um`: a place whose frame tells something new."""
        elsewhere = np.abs(self.candidates - here_um) > self.tolerance_um
        return float(self.candidates[elsewhere][np.argmax(self.log_posterior[elsewhere])])

    def field_log_posterior(self) -> np.ndarray:
        """Over field offsets, the focus positions summed out, normalised."""
        field_weights = log_sum_exp(self.log_joint, axis=1)
        return field_weights - log_sum_exp(field_weights)


def focus_loop(acquire, move_by, predictor: FocusPredictor, settings: FocusSettings | None = None, *, z_um=None,
               prior_sd_um: float | None = None, field_log_prior: np.ndarray | None = None,
               sharpness_before=(), **setting_changes) -> FocusResult:
    """Focus by inference: after every frame, the probability of each candidate focus position
    given every frame so far (where the stage stood, what its tiles said and how sharp it was),
    from the network's measured error (`predictor.error_model`). `acquire()` returns a frame,
    `move_by(delta_um)` moves the stage relative to where it is. The settings (FocusSettings,
    or its fields as keyword arguments: tolerance_um, max_images, max_step_um, confidence,
    z_range_um) say when to stop and where not to go; `result.p_in_focus`: the last probability of focus.

    - Stop when the stage is within the tolerance of focus with probability `confidence`,
      counting a last small move (at most twice the tolerance, not imaged) to the position
      most likely in focus (`next_place`), the frames' sharpness included (sharpness.py).
      Otherwise move there (at most `max_step_um`) and take another frame.
    - "no_sample" (too few tiles with content): no further move, the loop stops. An error (a bad
      frame, a camera or stage error) propagates before any further move.
    - With the images used up, or too few left to make it sure at the pace of the last three
      ("no_surer": a tolerance finer than it resolves), the stage goes where the frames were sharpest.
    - `z_range_um`, in the units of `z_um()`, which reads the stage: no move leaves it; one that
      would stops at the limit (`at_limit`), and if focus still lies beyond, the loop stops
      there ("at_limit"). A start outside the range: FocusError, no move.
    - `prior_sd_um`: focus lies within about this much of the start (focused before, drifting
      since: also the drift `sharpness_before` allows, else a sharpness width); else anywhere.
    - `field_log_prior`, `sharpness_before`: an earlier loop's `result.field_log_posterior`
      and `result.sharpness_seen` on the same field, which it left where this loop starts.
    """
    settings = FocusSettings.of(settings, **setting_changes)
    stage = LimitedStage(move_by, settings.max_step_um, settings.z_range_um, z_um)
    # focus positions relative to the start: as far out as the network's range, and the moves, may reach
    reach_um = (2 + settings.max_images) * predictor.error_model.saturation
    posterior = FocusPosterior(predictor.error_model, reach_um, settings.tolerance_um, sharpness_curve(predictor),
                               prior_sd_um, field_log_prior, sharpness_before)
    result = FocusResult(converged=False, images=0)
    in_focus, sureness = None, []
    while result.images < settings.max_images:
        estimate = predictor.predict(acquire())
        result.images, result.estimates = result.images + 1, [*result.estimates, estimate]
        if estimate.status == "no_sample":
            result.stop_reason = "no_sample"
            break
        here = stage.moved_um
        posterior.add_frame(estimate, here)
        in_focus = posterior.in_focus()
        target, result.p_in_focus, confirmation = best_place(posterior, in_focus, here, settings)
        sureness.append(min(result.p_in_focus, confirmation))
        target, result.converged = next_place(posterior, target, result.p_in_focus, confirmation, here, settings)
        if result.converged:
            stage.move(target - here)
            result.stop_reason = "within_tolerance"
            break
        if result.images == settings.max_images:
            break
        if no_surer(sureness, settings.max_images - result.images, settings.confidence):
            result.stop_reason = "no_surer"
            break
        if not stage.move(target - here) and stage.at_limit:
            result.stop_reason = "at_limit"  # already at the limit, and focus lies beyond it
            break
    return finished(result, stage, posterior, in_focus)


def best_place(posterior: FocusPosterior, in_focus: np.ndarray, here: float,
               settings: FocusSettings) -> tuple[float, float, float]:
    """(the place most likely in focus, that probability, how far the evidence confirms a stop
    there): by the whole belief, confirmed fully unless the sharpness decides. Where it does, a
    stop is confirmed as far as the frames' sharpness (with the network's evidence as far as it
    resolves the tolerance) puts focus within the tolerance of it, of the places near where the
    whole belief puts focus (sharpness_confirms); and near a frame, where that places focus (more
    likely than not near somewhere), the place is the one most likely in focus both by the whole
    belief and by that confirmation (the lesser of the two, as a stop needs both; of the places
    where both reach the confidence asked, the one the whole belief puts likeliest in focus):
    near focus, where the network reads its floor, the sharpness places focus and the network
    only says near where."""
    target, p_in_focus = likeliest_in_focus(in_focus, posterior.candidates, posterior.log_posterior, here)
    if not posterior.sharpness_decides():
        return target, p_in_focus, 1.0
    by_sharpness = posterior.sharpness_confirms(target)
    if posterior.near_a_frame(target) and by_sharpness.max() >= 0.5:
        both = np.minimum(in_focus, by_sharpness)
        if both.max() >= settings.confidence:
            both = np.where(both >= settings.confidence, in_focus, 0.0)
        target, _ = likeliest_in_focus(both, posterior.candidates, posterior.log_posterior, here)
        p_in_focus = float(np.interp(target, posterior.candidates, in_focus))
    return target, p_in_focus, float(np.interp(target, posterior.candidates, by_sharpness))


def next_place(posterior: FocusPosterior, target: float, p_in_focus: float, confirmation: float, here: float,
               settings: FocusSettings) -> tuple[float, bool]:
    """(where the stage goes next, whether that ends the loop in focus). In focus when `target`
    has the confidence asked for, lies within twice the tolerance of a place imaged (the last
    move, not imaged, goes no further from what was seen) and the evidence confirms it
    (`confirmation`, best_place's).
    Within a sharpness width of a frame, where the network alone cannot tell focus from its
    floor, the next frame brackets the target for the sharpness; a target where the stage
    already is, the likeliest place beyond the tolerance, so that the next frame tells something new."""
    nearest = min(abs(target - place) for place in posterior.imaged)
    # a target ten candidate steps (tolerance_um / 5) from a frame is within twice the tolerance,
    # whichever way the steps' sum rounds
    sure = p_in_focus >= settings.confidence and nearest <= 2 * settings.tolerance_um * (1 + 1e-9)
    if sure and confirmation >= settings.confidence:
        return target, True
    if posterior.sharpness_decides() and (sure or posterior.near_a_frame(target)):
        return posterior.bracket(target), False
    if abs(target - here) < settings.tolerance_um / 2:
        return posterior.likeliest_beyond(here), False
    return target, False


def no_surer(sureness: list[float], images_left: int, confidence: float) -> bool:
    """Whether the loop, having come to know about where focus is (SETTLED, three frames ago),
    can no longer reach the confidence asked with the frames it has left, each adding as much as
    each of its last three did: the tolerance is finer than the network and the frames'
    sharpness resolve here, and further frames would be spent for little."""
    if len(sureness) < 4 or sureness[-4] < SETTLED:
        return False
    gain = max(sureness[-1] - sureness[-4], 0.0) / 3
    return sureness[-1] + gain * images_left < confidence


def confirmation_weight(resolution: float) -> float:
    """How much of the network's evidence confirms a stop along with the frames' sharpness, for
    a network of this ErrorModel.resolution: all where it resolves the tolerance (1 or more),
    none at or below SILENT_RESOLUTION (the 24-field 40x demo networks, 0.23-0.24, keep the loop
    they were measured with), in between the square of how far it has come from there, so that
    a network just short of resolving does not pay a bracket frame at every loop. Measured (docs/
    focus_loop.md): weighed by the resolution squared, a 24-field 20x network (0.67) stopped on
    one frame 0.65 DOF out and claimed more than held; this weight keeps its claims and spares
    the 96-field 20x network (0.82) most of its bracket frames."""
    return min(max((resolution - SILENT_RESOLUTION) / (1 - SILENT_RESOLUTION), 0.0), 1.0) ** 2


def sharpness_curve(predictor: FocusPredictor) -> SharpnessCurve:
    """The sharpness curve measured on the network's held-out images, or where the model's file
    has none, one as wide as the objective's depth of field (where the file does not tell it
    either, the network's reading at focus: about a DOF)."""
    model = predictor.error_model
    return model.sharpness_curve() or SharpnessCurve.assumed(predictor.dof_um or model.gain * max(model.floor, 1e-3))


def finished(result: FocusResult, stage: "LimitedStage", posterior: FocusPosterior,
             in_focus: np.ndarray | None) -> FocusResult:
    """The result of a loop that stopped: an unconverged one ends where its frames were
    sharpest (never blurrier than found), or without their sharpness at the likeliest place;
    the moves made and what the frames told of the field."""
    sharpest = posterior.sharpness.sharpest()
    if not result.converged and sharpest is not None:
        stage.move(sharpest - stage.moved_um)
        result.p_in_focus = float(np.interp(stage.moved_um, posterior.candidates, in_focus))
    elif not result.converged and posterior.imaged:
        result.p_in_focus = end_at_likeliest_place(stage, posterior.imaged, posterior.candidates, in_focus)
    result.moves_um, result.at_limit = stage.moves_um, stage.at_limit
    if posterior.imaged:
        result.field_log_posterior = posterior.field_log_posterior()
    result.sharpness_seen = posterior.sharpness.frames_relative_to(stage.moved_um, posterior.candidates)
    return result


def end_at_likeliest_place(stage: "LimitedStage", imaged: list[float], candidates: np.ndarray,
                           in_focus: np.ndarray) -> float:
    """An unconverged loop's end: the stage to the place most likely in focus, of those imaged
    and the one computed from every frame (the latest on a tie); that place's probability."""
    options = [*imaged, float(candidates[int(np.argmax(in_focus))])]
    chosen = max(reversed(options), key=lambda place: float(np.interp(place, candidates, in_focus)))
    stage.move(chosen - stage.moved_um)
    return float(np.interp(stage.moved_um, candidates, in_focus))


def field_seen_before(population: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The log prior of a field's offset when an earlier loop on it learnt `seen` (its
    result's field_log_posterior), kept open by FIELD_CHANGE to the population's `population`."""
    seen = np.asarray(seen, dtype=np.float64)
    if seen.shape != population.shape:
        raise ValueError(f"field_log_prior has {seen.size} values, the error model's field offsets {population.size}: "
                         "it must be a field_log_posterior of a loop with the same predictor")
    return np.logaddexp(math.log(1 - FIELD_CHANGE) + seen, math.log(FIELD_CHANGE) + population)


def focus_candidates(reach_um: float, tolerance_um: float, points: int = 1501) -> np.ndarray:
    """Candidate focus positions relative to the start, `reach_um` either side, a fifth of the
    tolerance apart or as many as `points` allow."""
    step = max(tolerance_um / 5, 2 * reach_um / (points - 1))
    return np.arange(-reach_um, reach_um + step / 2, step)


def likeliest_in_focus(in_focus: np.ndarray, candidates: np.ndarray, log_posterior: np.ndarray,
                       here: float) -> tuple[float, float]:
    """(the position most likely in focus, that probability); of positions as likely within a
    thousandth, where the belief is narrower than the tolerance (the best more likely in focus
    than not), the nearest to its middle (its median), not an edge of the places all in focus;
    else (where the network saturates, all those beyond its range) the nearest to `here`."""
    best = in_focus.max()
    near_best = np.flatnonzero(in_focus >= best * 0.999)
    if best >= 0.5:
        weights = np.exp(log_posterior - log_posterior.max())
        here = candidates[np.searchsorted(np.cumsum(weights), weights.sum() / 2)]
    chosen = near_best[np.argmin(np.abs(candidates[near_best] - here))]
    return float(candidates[chosen]), float(in_focus[chosen])


def probability_in_focus(log_posterior: np.ndarray, candidates: np.ndarray, tolerance_um: float) -> np.ndarray:
    """For the stage at each candidate position, the probability that focus lies within the
    tolerance of it: each candidate stands for the places within half a step of it, counted in
    the part of them the tolerance reaches (whole candidates would count a step's worth more or less)."""
    posterior = np.exp(log_posterior - log_posterior.max())
    step = candidates[1] - candidates[0]
    edges = np.append(candidates - step / 2, candidates[-1] + step / 2)
    cumulative = np.concatenate([[0.0], np.cumsum(posterior)]) / posterior.sum()
    return np.interp(candidates + tolerance_um, edges, cumulative) - np.interp(candidates - tolerance_um, edges, cumulative)


class LimitedStage:
    """The loop's relative moves, each cut to `max_step_um` and to `z_range_um` (read with `z_um`)."""

    def __init__(self, move_by, max_step_um: float | None, z_range_um: tuple[float, float] | None, z_um):
        self.move_by, self.max_step_um, self.z_range_um, self.z_um = move_by, max_step_um, z_range_um, z_um
        self.moves_um: list[float] = []
        self.at_limit = False
        if z_range_um is not None:
            if z_um is None:
                raise ValueError("z_range_um needs z_um, a function that reads the stage's position")
            low, high = z_range_um
            if not low <= z_um() <= high:
                raise FocusError(f"the stage is at z = {z_um():.3f}, outside z_range_um ({low:g}, {high:g}): "
                                 "nothing moved")

    @property
    def moved_um(self) -> float:
        return float(sum(self.moves_um))

    def move(self, delta_um: float) -> float:
        """Move by `delta_um` as far as the limits allow; the move made (0 when none)."""
        if self.max_step_um is not None:
            delta_um = math.copysign(min(abs(delta_um), self.max_step_um), delta_um)
        if self.z_range_um is not None:
            low, high = self.z_range_um
            now = self.z_um()
            allowed = min(max(now + delta_um, low), high) - now
            self.at_limit |= abs(allowed - delta_um) > 1e-9
            delta_um = allowed
        if abs(delta_um) < 1e-9:
            return 0.0
        self.move_by(delta_um)
        self.moves_um.append(delta_um)
        return delta_um


def timed(function, spent: dict, key: str):
    """`function`, adding the seconds each call takes to spent[key]: to tell the focus loop's own
    cost from the camera's and the network's."""
    def call(*args):
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            spent[key] += time.perf_counter() - start
    return call
