"""The frames' own sharpness as the focus loop's second witness: frames of one field taken at
different heights differ in sharpness, and that difference carries no field offset (the field
is compared with itself). numpy only.

The log Brenner measure of a field around focus follows a dip of some width and unknown depth:

    log S(z) = a - depth * u / (1 + u),   u = ((z - focus - center) / width)^2

`a` (the field's brightness and texture) cancels between frames; the depth (with the objective
and the field's contrast over the camera's noise) is fitted to the frames, within what the
held-out fields' depths make likely. Where the shape comes from: myTest.py measures the width,
the center (where the sharpest plane lies from the labels' focus, from the images near it), how
far images stray from the dip and the fields' depths on the held-out splits' fields, each
imaged at several heights (fit_sharpness_curve), and writes them into the error model. On the
demo optics (10x/0.3, 20x/0.7, 40x/0.75) the width is 1.05-1.15 DOF, the center within 0.1 DOF,
the images within 0.015-0.035 of the dip and the depth 2.0-2.9, 1.9-2.2 and 1.1-1.4, fields
spreading it by an eighth to two fifths. A file without them assumes a width of one DOF,
weighing 0.7 to 1.4 DOF alike, a spread of 0.1 and a depth of 2 +- 1. Far out on its tail a
field's curve may part from the dip (keep falling, or flatten at the camera's noise): a frame
counts less the further out it lies, by as much as the held-out images stray further out
(tail_widths; on the demo optics they do not, to 6 widths), or where not measured, as if they
strayed twice as far at 3 widths; but the curve still falls as the blur grows, so there the
order of two frames tells which is the nearer to focus, when their sharpness cannot tell how near.
"""
import math
from dataclasses import dataclass

import numpy as np

from .imaging import log_sum_exp, student_t_log_density


ASSUMED_WIDTHS = (0.7, 1.0, 1.4)  # times the DOF, weighed alike where the curve was not measured
MEASURED_WIDTHS = (0.85, 1.0, 1.2)  # times the measured width: fields and frames differ a little
ASSUMED_DEPTH = (2.0, 1.0)  # of the dip, log units, and its spread between fields: 0.5-2.9 on the demo optics
# a depth is never trusted closer than this fraction of it: the microscope's fields are not the split's
MIN_DEPTH_SPREAD = 0.25
ASSUMED_SPREAD = 0.1  # of log sharpness between frames beyond what the curve explains (noise, tilt, tiles)
# where not measured (tail_widths), a frame this many widths from the peak strays twice the spread from the dip,
# further ones more
TAIL_WIDTHS = 3.0
MIN_SPREAD = 0.03  # a measured spread is never trusted below this: the microscope's frames are not the split's
NEAR_PEAK = 1.0  # widths from focus within which held-out images tell where the dip peaks
# an earlier loop's frames: where focus was then is summed over the places they leave within
# this many log units of the likeliest, at most this many of them
THEN_LIKELY, THEN_MOST = 12.0, 8
# the frames show a drift between an earlier loop and this one where letting focus move between
# them fits this many log units better than one focus; how far, where every drift more than
# DRIFT_KNOWN widths from the best fits as much worse
DRIFT_SHOWN, DRIFT_KNOWN = 3.0, 0.5
# of pairs of a field's frames far out on its tail, this share are ordered as by a coin flip,
# whatever the curve says (a flicker of the lamp, a bubble drifting through, bleaching)
ORDER_SLIP = 0.05


@dataclass(frozen=True)
class SharpnessCurve:
    """The shape of a field's log sharpness around focus, in um: its width, where it peaks
    relative to the labels' focus (spherical aberration can move the sharpest plane off the
    focus the labels were made with), how far frames stray from it; measured on the validation
    split's fields (fit_sharpness_curve) or assumed from the objective's DOF."""

    width_um: float
    center_um: float = 0.0
    spread: float = ASSUMED_SPREAD
    depth: float = ASSUMED_DEPTH[0]  # the dip's depth, log units, on average over fields
    depth_spread: float = ASSUMED_DEPTH[1]  # how far a field's depth may lie from that
    tail_widths: float = TAIL_WIDTHS  # a frame this many widths from the peak strays twice the spread
    measured: bool = False

    @property
    def widths_um(self) -> np.ndarray:
        return np.array(MEASURED_WIDTHS if self.measured else ASSUMED_WIDTHS) * self.width_um

    @classmethod
    def assumed(cls, dof_um: float) -> "SharpnessCurve":
        return cls(width_um=dof_um)


def log_sharpness(tiles: np.ndarray, every: int = 4) -> float:
    """The log of the median Brenner measure of (N, H, W, 3) uint8 tiles' focus channel (as
    make_dataset.py labels focus), across every `every`th row and down every `every`th column:
    a quarter of the pixels tell the same (the loop compares frames of one field, so the
    level does not matter) at a quarter of the cost."""
    if len(tiles) == 0:
        return math.nan
    rows = tiles[:, ::every, :, 1].astype(np.float32)  # focus_channel: the tiles are RGB, green defines focus
    columns = tiles[:, :, ::every, 1].astype(np.float32)
    across = rows[:, :, 2:] - rows[:, :, :-2]
    down = columns[:, 2:] - columns[:, :-2]
    energy = np.einsum("nij,nij->n", across, across) + np.einsum("nij,nij->n", down, down)
    return float(np.log(np.median(energy) / across[0].size + 1e-6))


def dip(offset_um: np.ndarray, width_um: float) -> np.ndarray:
    """The sharpness curve's shape at `offset_um` from focus, for a depth of 1: 0 at focus, -1 far out."""
    u = (offset_um / width_um) ** 2
    return -u / (1 + u)


class SharpnessEvidence:
    """What the sharpness of a field's frames says of where its focus lies, relative to the
    loop's start: a log likelihood over candidate focus positions."""

    def __init__(self, curve: SharpnessCurve):
        self.curve = curve
        self.positions: list[float] = []
        self.values: list[float] = []
        self.seen_before = 0  # the first frames are an earlier loop's on the same field
        self.drift_sd_um = 0.0  # how far focus may have moved since

    @property
    def width_um(self) -> float:
        return self.curve.width_um

    def add_frame(self, here_um: float, value: float) -> None:
        if math.isfinite(value):
            self.positions.append(here_um)
            self.values.append(value)

    def add_frames_seen_before(self, frames, drift_sd_um: float) -> None:
        """An earlier loop's frames of this field, (z relative to where it left the stage, which
        is this loop's start; log sharpness). Focus may have drifted since by about
        `drift_sd_um`: where it lay then is summed out over that drift (log_likelihood), so
        a start still in focus shows as sharp as they did, and one that drifted shows less
        sharp, by how much telling how far. One frame alone tells nothing of where focus was:
        it is left out."""
        frames = [(here_um, value) for here_um, value in frames if math.isfinite(value)]
        if len(frames) < 2:
            return
        for here_um, value in frames:
            self.add_frame(here_um, value)
        self.seen_before, self.drift_sd_um = len(self.values), drift_sd_um

    def sharpest(self) -> float | None:
        """Where this loop's sharpest frame was taken, relative to its start; None before any."""
        values = self.values[self.seen_before:]
        return self.positions[self.seen_before + int(np.argmax(values))] if values else None

    def frames_relative_to(self, end_um: float, candidates: np.ndarray, most: int = 8) -> list[tuple[float, float]]:
        """The frames, (z relative to `end_um`, log sharpness), for the next loop on the field, the
        `most` latest: this loop's and the earlier loop's, those moved by the drift between the
        loops that the frames show (drift_shown), so that all lie about one focus. Where the
        frames cannot show how far focus drifted (this loop took one frame: it tells how far it
        lies from focus, not on which side; two on one flank leave where focus was open), the two
        cannot be put about one focus: this loop's frames alone, or where it took only one, the
        earlier loop's (put about this loop's focus as if no drift, one frame that lies off by the
        drift makes the set fit no focus, and the next loop's sharpness then favours one far out,
        where the dip is flat)."""
        earlier = list(zip(self.positions[:self.seen_before], self.values[:self.seen_before]))
        latest = list(zip(self.positions[self.seen_before:], self.values[self.seen_before:]))
        drift = self.drift_shown(candidates) if len(latest) >= 2 else None
        if drift is not None:
            frames = [(here + drift, value) for here, value in earlier] + latest
        else:
            frames = latest if len(latest) >= 2 else earlier
        return [(here - end_um, value) for here, value in frames][-most:]

    def drift_shown(self, candidates: np.ndarray) -> float | None:
        """How far focus moved between the earlier loop's frames and this loop's, as the frames
        show it: 0 unless letting focus move between them fits DRIFT_SHOWN log units better than
        one focus; then where the best such fit puts it (the widths summed out), or None if a fit
        with a drift more than DRIFT_KNOWN widths from it (the other way, say) comes within
        DRIFT_SHOWN of it."""
        if not self.seen_before or len(self.values) == self.seen_before:
            return 0.0
        statistics, then_prior = self.statistics(candidates), self.then_log_prior(candidates)
        likely = likely_places(np.logaddexp.reduce([self.fitted(then) for _, then in statistics], axis=0)
                               + then_prior, THEN_MOST)
        one_focus = np.logaddexp.reduce([self.fitted(fit + then) for fit, then in statistics], axis=0) + then_prior
        moved = np.logaddexp.reduce([self.fitted(fit[:, None, :] + then[:, likely, None])
                                     for fit, then in statistics], axis=0) + then_prior[likely, None]  # (then, now)
        if moved.max() < one_focus.max() + DRIFT_SHOWN:
            return 0.0
        drifts = candidates[None, :] - candidates[likely, None]
        drift = float(drifts.flat[np.argmax(moved)])
        elsewhere = moved[np.abs(drifts - drift) > DRIFT_KNOWN * self.curve.width_um]
        return None if elsewhere.size and elsewhere.max() > moved.max() - DRIFT_SHOWN else drift

    def log_likelihood(self, candidates: np.ndarray) -> np.ndarray:
        """Over candidate focus positions (evenly spaced); flat with fewer than two frames (one
        frame has nothing to be compared with). For each width the field's level and the dip's
        depth are fitted to the frames (weighted least squares, the depth drawn towards the
        curve's depth as far as its spread between fields allows), and the fit weighed as a
        Gaussian likelihood with the level and depth summed out: frames that fit a likely
        depth well for a candidate make it likely, so that even two frames, one far out, tell
        how far the other lies from focus. A frame counts less the further it lies out on the
        dip's tail, where fields' curves may part from the dip (the curve's tail_widths). An earlier loop's
        frames lie about where focus was then: that is summed out, weighed by the drift since
        (as focus_loop's prior_sd_um weighs the start: summed_over_drift)."""
        if len(self.values) < 2:
            return np.zeros(len(candidates))
        totals = [self.summed_over_drift(fit, then, candidates) if self.seen_before else self.fitted(fit)
                  for fit, then in self.statistics(candidates)]
        return np.logaddexp.reduce(totals, axis=0) - math.log(len(totals)) + self.order_log_likelihood(candidates)

    def order_log_likelihood(self, candidates: np.ndarray) -> np.ndarray:
        """Over candidate focus positions, what the order of this loop's frames' sharpness says,
        where the dip's depth says little: far out on the tail a field's curve parts from the
        dip's shape, but it still falls as the blur grows, so of two frames the one nearer focus
        is the sharper. For each pair, the log of how likely the sign of their difference is,
        against the likeliest it can be: a logistic in the fall the dip predicts between them
        over the spread of a difference of two frames, ORDER_SLIP of the time a coin flip whatever
        it predicts; weighed by the share of the frames' spread that the tail adds (tail_widths),
        the lesser of the two frames'. So it counts only against places the order contradicts,
        and near focus, where the dip's fit tells it, for nothing."""
        positions = np.array(self.positions[self.seen_before:])
        values = np.array(self.values[self.seen_before:])
        offsets = positions[:, None] - candidates - self.curve.center_um
        shape = self.curve.depth * dip(offsets, self.width_um)
        growth = tail_growth(offsets / self.width_um, self.curve.tail_widths)
        tail = (growth - 1) / growth
        scale = math.sqrt(2) * self.curve.spread / 1.702  # a logistic as steep as the normal of that spread
        first, second = np.triu_indices(len(values), 1)  # every pair once
        fall = (shape[first] - shape[second]) * np.sign(values[first] - values[second])[:, None]
        agrees = ORDER_SLIP / 2 + (1 - ORDER_SLIP) * 0.5 * (1 + np.tanh(fall / (2 * scale)))
        return np.sum(np.minimum(tail[first], tail[second]) * np.log(agrees / (1 - ORDER_SLIP / 2)), axis=0)

    def statistics(self, candidates: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """For each of the curve's widths, the dip_statistics over candidates of this loop's frames
        and of the earlier loop's (None without them)."""
        values = np.array(self.values) - np.mean(self.values)
        offsets = np.array(self.positions)[:, None] - candidates - self.curve.center_um  # (frames, candidates)
        before, now = slice(0, self.seen_before), slice(self.seen_before, None)
        curve = self.curve
        return [(dip_statistics(offsets[now], values[now, None], curve.spread, width, curve.tail_widths),
                 dip_statistics(offsets[before], values[before, None], curve.spread, width, curve.tail_widths)
                 if self.seen_before else None)
                for width in self.curve.widths_um]

    def summed_over_drift(self, now: np.ndarray, then: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The log likelihood over candidates of this loop's frames (statistics `now`) and an
        earlier loop's (`then`, over where focus was then), focus then summed out, weighed by the
        drift from it to each candidate. Where focus was then is summed over the places the
        earlier frames leave likely (within THEN_LIKELY of the likeliest, at most THEN_MOST), near
        where that loop left the stage (then_log_prior)."""
        then_prior = self.then_log_prior(candidates)
        likely = likely_places(self.fitted(then) + then_prior, THEN_MOST)
        joint = self.fitted(now[:, None, :] + then[:, likely, None]) + then_prior[likely, None]  # (then, now)
        drift = (candidates[None, :] - candidates[likely, None]) / max(self.drift_sd_um, 1e-9)
        return log_sum_exp(joint + student_t_log_density(drift), axis=0)

    def then_log_prior(self, candidates: np.ndarray) -> np.ndarray:
        """Over candidates, where focus was when the earlier loop's frames were taken: near where
        that loop left the stage, this loop's start (the Micro-Manager engine passes on the frames
        of loops that stopped in focus only); Student's t a sharpness width wide. Two frames alone
        can leave it anywhere (far out, where the dip is flat, as well as near): without this, the
        places summed over could all lie far from where that loop found focus."""
        return student_t_log_density(candidates / self.width_um)

    def fitted(self, statistics: np.ndarray) -> np.ndarray:
        """The log likelihood of frames summed into `statistics` (dip_statistics), the field's
        level and the dip's depth summed out, the depth drawn towards the curve's."""
        total_weight, sx, sy, sxx, sxy, syy, log_sigma = statistics
        prior_depth, prior_weight = self.curve.depth, 1 / self.curve.depth_spread**2
        sxx, sxy, syy = sxx - sx * sx / total_weight, sxy - sx * sy / total_weight, syy - sy * sy / total_weight
        depth = (sxy + prior_depth * prior_weight) / (sxx + prior_weight)
        misfit = syy - 2 * depth * sxy + depth * depth * sxx + prior_weight * (depth - prior_depth) ** 2
        room = np.log1p(sxx / prior_weight)  # what summing out the depth costs
        return -misfit / 2 - room / 2 - log_sigma - np.log(total_weight) / 2


def likely_places(log_likelihood: np.ndarray, most: int) -> np.ndarray:
    """The indices of the `most` likeliest places, of those within THEN_LIKELY of the likeliest."""
    likely = np.argsort(log_likelihood)[-most:]
    return likely[log_likelihood[likely] >= log_likelihood.max() - THEN_LIKELY]


def dip_statistics(offsets: np.ndarray, values: np.ndarray, spread: float, width: float,
                   tail_widths: float) -> np.ndarray:
    """Over candidates, the weighted sums a fit of frames' `values` at `offsets` (frames,
    candidates) from focus on the dip of `width` needs: weight, weight x shape, weight x
    value, weight x shape^2, weight x shape x value, weight x value^2, and the log of the
    frames' spreads (`spread` at the peak, twice that `tail_widths` widths out). Sums of two
    sets of frames add."""
    shape = dip(offsets, width)
    sigma = spread * tail_growth(offsets / width, tail_widths)
    weight = 1 / sigma**2
    return np.stack([weight.sum(axis=0), (weight * shape).sum(axis=0), (weight * values).sum(axis=0),
                     (weight * shape * shape).sum(axis=0), (weight * shape * values).sum(axis=0),
                     (weight * values * values).sum(axis=0), np.log(sigma).sum(axis=0)])


def fit_sharpness_curve(labels: np.ndarray, values: np.ndarray,
                        fields: np.ndarray) -> tuple[float, float, float, float, float, float] | None:
    """(width, center, spread, depth, depth spread, tail widths) of the dip that fits the held-out
    images' log sharpness `values` best, each field (`fields`: one key per image) with its own level
    and depth; lengths in the labels' unit. The width, the depth and how far the images stray from
    the dip's shape, at its peak and further out (measured_tail), come from every image; where the
    dip peaks, from those near it (peak_center). The depth is the fields' mean, its spread how far a
    field not among them may lie from it (their standard deviation times sqrt(1 + 1/fields)). None
    where no field has three images to compare."""
    labels, values, fields = np.asarray(labels, float), np.asarray(values, float), np.asarray(fields)
    usable = np.isfinite(values)
    groups = [(labels[chosen], values[chosen]) for key in np.unique(fields[usable])
              if (chosen := usable & (fields == key)).sum() >= 3]
    if not groups:
        return None
    reach = max(float(np.abs(labels).max()), 1e-9)
    best = (math.inf, math.nan, math.nan)
    for width in np.geomspace(0.02, 0.6, 41) * reach:
        for center in np.linspace(-0.5, 0.5, 21) * width:
            misfit = sum(dip_fit(dip(z - center, width), v)[1] for z, v in groups)
            best = min(best, (misfit, width, center))
    _, width, flank_center = best
    freedom = sum(len(z) for z, _ in groups) - 2 * len(groups) - 2
    fits = [dip_residuals(dip(z - flank_center, width), v) for z, v in groups]
    depths = np.array([depth for depth, _ in fits])
    depth_spread = float(depths.std(ddof=1)) * math.sqrt(1 + 1 / len(depths)) if len(depths) > 1 else float(depths[0])
    center = peak_center(groups, depths, width, flank_center)
    residuals = np.concatenate([field_residuals for _, field_residuals in fits])
    widths_out = np.concatenate([np.abs(z - flank_center) / width for z, _ in groups])
    tail = measured_tail(residuals, widths_out)
    spread = math.sqrt(float(np.sum((residuals / tail_growth(widths_out, tail)) ** 2)) / max(freedom, 1))
    return float(width), center, spread, float(depths.mean()), depth_spread, tail


def tail_growth(widths_out: np.ndarray, tail_widths: float) -> np.ndarray:
    """How many times its spread at the dip's peak a frame this many widths out strays from the dip."""
    return 1 + (widths_out / tail_widths) ** 2


def measured_tail(residuals: np.ndarray, widths_out: np.ndarray) -> float:
    """The tail widths under which the held-out images' `residuals` from the dip, each `widths_out`
    widths from its peak, are likeliest (each a normal of the spread at the peak times tail_growth).
    Images that stray no further out than near the peak cannot tell a growth that doubles the spread
    beyond twice their reach from none: at most that (at least TAIL_WIDTHS, what is assumed
    unmeasured), so a frame the loop takes further out than the held-out images reached counts for less."""
    most = max(2 * float(widths_out.max()), TAIL_WIDTHS)
    best = (-math.inf, most)
    for tail in np.geomspace(1.0, most, 25):
        growth = tail_growth(widths_out, tail)
        scale = max(float(np.sqrt(np.mean((residuals / growth) ** 2))), 1e-12)
        best = max(best, (-len(residuals) * math.log(scale) - float(np.log(growth).sum()), float(tail)))
    return best[1]


def peak_center(groups: list[tuple[np.ndarray, np.ndarray]], depths: np.ndarray, width: float,
                flank_center: float) -> float:
    """Where the dip peaks from the labels' focus, told by the images within NEAR_PEAK widths of it
    alone (`flank_center`: where the fit to every image put it), each field with its own level and
    the depth its whole curve gives (`depths`, one per group). The images further out tell the width
    and the depth, but a field's flanks part from the dip's shape and pull a center fitted to them
    (by 0.06-0.13 DOF at 20x/0.7, four validation fields imaged at eight heights, where the rendered
    tissue peaks within 0.01 DOF of focus). Unless two fields have two images that near: 0, the
    labels' focus, which make_dataset.py puts where the Brenner measure peaks."""
    near = []
    for (z, values), depth in zip(groups, depths):
        close = np.abs(z - flank_center) <= NEAR_PEAK * width
        if close.sum() >= 2:
            near.append((z[close], values[close], depth))
    if len(near) < 2:
        return 0.0

    def misfit(center: float) -> float:
        residuals = [values - depth * dip(z - center, width) for z, values, depth in near]
        return sum(float(((residual - residual.mean()) ** 2).sum()) for residual in residuals)

    return float(min(np.linspace(-0.5, 0.5, 101) * width, key=misfit))


def dip_fit(shape: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(the depth, at least 0, of one field's values about their best level on `shape`; the squared residual)."""
    depth, residuals = dip_residuals(shape, values)
    return depth, float((residuals**2).sum())


def dip_residuals(shape: np.ndarray, values: np.ndarray) -> tuple[float, np.ndarray]:
    """(the depth, at least 0, of one field's values about their best level on `shape`; their residuals)."""
    shape, values = shape - shape.mean(), values - values.mean()
    depth = max(float(shape @ values) / max(float(shape @ shape), 1e-12), 0.0)
    return depth, values - depth * shape
