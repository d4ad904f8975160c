"""How far to trust a network: its error measured on images held out of training (myTest.py: the
validation and test splits; the checkpoint was chosen on the validation split, which alone
flatters it, and the spreads between fields need as many fields as there are), a few numbers that
travel in the ONNX file's metadata, and the likelihood of what a frame shows for each candidate
defocus, which the focus loop reasons with. numpy only; lengths in the model's unit (um for
SOAF, DOF for MOAF) until `in_um`.

The measured model, for a true distance d from focus (whatever the side):
- the predicted distance is spread around gain * sqrt(min(d, saturation)^2 + floor^2):
  a floor near focus (a network reads a few tenths of a DOF where the image is sharp) and no
  growth beyond the largest distance trained on (`saturation`);
- its spread is sigma0 + sigma_slope * min(d, saturation); most of it is the field's own: a
  field unlike most reads long or short at every distance by a factor (its texture looks finer
  or coarser than most), an offset that spreads by `field_spread` (the held-out images'
  residuals' robust spread) at the middle of the trained range and in proportion elsewhere;
- the side is right with probability 0.5 + (side_max - 0.5) * (1 - exp(-d / side_reach)):
  a coin flip at focus, as reliable as the optics allow further out.
A frame's estimate is the median of its tiles: for a given field offset its spread is that
of the frame's own tiles scaled by 1.2533 / sqrt(tiles), plus the uncertainty of the fit
itself. The focus loop infers the field offset with the focus, from frames at several places.
"""
import json
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .imaging import log_sum_exp, robust_spread, student_t_log_density
from .sharpness import ASSUMED_DEPTH, MIN_DEPTH_SPREAD, MIN_SPREAD, TAIL_WIDTHS, SharpnessCurve, fit_sharpness_curve

MEDIAN_EFFICIENCY = 1.2533  # the standard error of a median of normal values over that of their mean


def spread_upper_bound(count: int) -> float:
    """How much larger than its estimate from `count` values a standard deviation may be, at 90 %
    confidence: sqrt((n - 1) / chi2_0.1(n - 1)), the quantile by Wilson and Hilferty's approximation."""
    freedom = max(count - 1, 1)
    quantile = freedom * (1 - 2 / (9 * freedom) - 1.2816 * math.sqrt(2 / (9 * freedom))) ** 3
    return math.sqrt(freedom / max(quantile, 1e-3))


def expected_distance(true_distance: np.ndarray, floor: float, gain: float, saturation: float) -> np.ndarray:
    """The distance a network reads on average at a true distance: a floor near focus, flat beyond saturation."""
    return gain * np.sqrt(np.minimum(true_distance, saturation) ** 2 + floor**2)


# fields files exported before them lack
OPTIONAL_FIELDS = ("field_spread", "sharpness_width", "sharpness_center", "sharpness_spread", "sharpness_depth",
                   "sharpness_depth_spread", "sharpness_tail", "validation_fields", "measured")
# fields as files exported before they had their present names call them
FORMER_NAMES = {"side_scale": "side_reach", "images": "validation_images"}


@dataclass(frozen=True)
class ErrorModel:
    floor: float  # the distance read at focus, before the gain
    gain: float
    sigma0: float  # spread of one tile's distance at focus
    sigma_slope: float  # growth of that spread per unit of distance
    saturation: float  # the largest distance trained on: beyond, the network sees no difference
    side_max: float  # the side's reliability far from focus
    side_reach: float  # the distance over which it reaches most of that
    validation_images: int  # held-out images measured (the fit's own uncertainty shrinks with them)
    field_spread: float = 0.0  # standard deviation of a field's offset on the distance read, at mid-range (field_scale)
    # the held-out fields' log sharpness around focus (sharpness.py's dip): its width, where it
    # peaks, how far images stray from it, its depth and how far fields' depths spread, how many
    # widths out images stray twice as far; a width of 0: not measured (then it is assumed from
    # the DOF), a depth or a tail of 0: assumed
    sharpness_width: float = 0.0
    sharpness_center: float = 0.0
    sharpness_spread: float = 0.0
    sharpness_depth: float = 0.0
    sharpness_depth_spread: float = 0.0
    sharpness_tail: float = 0.0
    validation_fields: int = 0  # fields among the held-out images (0: not told; then each image counts as one)
    measured: bool = True  # False: a conservative default for a model exported without one

    def mean_distance(self, distance: np.ndarray) -> np.ndarray:
        return expected_distance(distance, self.floor, self.gain, self.saturation)

    def sigma(self, distance: np.ndarray) -> np.ndarray:
        return self.sigma0 + self.sigma_slope * np.minimum(distance, self.saturation)

    def field_scale(self) -> float:
        """The distance read at the middle of the trained range, where a field's offset is taken
        to be as large as `field_spread` measures it: the offset scales with the distance read."""
        return max(float(self.mean_distance(np.array(self.saturation / 2))), 1e-9)

    def side_accuracy(self, distance: np.ndarray) -> np.ndarray:
        return 0.5 + (self.side_max - 0.5) * (1 - np.exp(-distance / self.side_reach))

    def resolution(self, tolerance_um: float) -> float:
        """How far the network's reading changes near focus, within the tolerance, over how far it
        spreads at focus: below 1 it cannot tell focus from its floor alone. The spread is that of
        one held-out image's reading, each a tile of its own field, so the field's part is in it
        (field_spread is measured from the same residuals: adding it would count that part twice),
        as large as the few held-out fields that measured it leave plausible (the upper 90 % bound
        of a standard deviation from that many): four fields tell a spread within a factor 2.3,
        sixteen within 1.3."""
        change = float(self.mean_distance(np.array(tolerance_um)) - self.mean_distance(np.array(0.0)))
        spread = float(self.sigma(np.array(0.0)))
        return change / (spread * spread_upper_bound(self.validation_fields or self.validation_images))

    def resolves(self, tolerance_um: float) -> bool:
        """Whether the network alone tells focus from its floor within the tolerance (`resolution`)."""
        return self.resolution(tolerance_um) > 1

    def in_um(self, um_per_unit: float) -> "ErrorModel":
        """The same model with lengths in um (a MOAF model's DOF times `um_per_unit`)."""
        return replace(self, floor=self.floor * um_per_unit, sigma0=self.sigma0 * um_per_unit,
                       saturation=self.saturation * um_per_unit, side_reach=self.side_reach * um_per_unit,
                       field_spread=self.field_spread * um_per_unit, sharpness_width=self.sharpness_width * um_per_unit,
                       sharpness_center=self.sharpness_center * um_per_unit)

    def sharpness_curve(self) -> SharpnessCurve | None:
        """The sharpness curve measured on the held-out images; None where it was not."""
        if self.sharpness_width <= 0:
            return None
        depth, depth_spread = (self.sharpness_depth, self.sharpness_depth_spread) if self.sharpness_depth > 0 \
            else ASSUMED_DEPTH
        return SharpnessCurve(self.sharpness_width, self.sharpness_center, max(self.sharpness_spread, MIN_SPREAD),
                              depth, max(depth_spread, MIN_DEPTH_SPREAD * depth),
                              self.sharpness_tail if self.sharpness_tail > 0 else TAIL_WIDTHS, measured=True)

    def to_metadata(self) -> str:
        return json.dumps({name: round(value, 6) if isinstance(value, float) else value
                           for name, value in asdict(self).items() if name != "measured"})

    @classmethod
    def from_metadata(cls, text: str) -> "ErrorModel":
        """The model to_metadata wrote; ValueError naming what is missing, unknown or out of range."""
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError("an error model is a JSON object of its fields")
        values = {FORMER_NAMES.get(name, name): value for name, value in values.items()}
        needed = {item.name for item in fields(cls) if item.name not in OPTIONAL_FIELDS}
        known = {item.name for item in fields(cls)} - {"measured"}
        if needed - set(values) or set(values) - known:
            raise ValueError(f"missing {sorted(needed - set(values))}, unknown {sorted(set(values) - known)}")
        if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in values.values()):
            raise ValueError("every field must be a finite number")
        model = cls(**values)
        if not (model.floor >= 0 and model.gain > 0 and model.sigma0 > 0 and model.sigma_slope >= 0
                and model.saturation > 0 and 0.5 <= model.side_max < 1 and model.side_reach > 0
                and model.validation_images >= 0 and model.field_spread >= 0 and model.sharpness_width >= 0
                and model.sharpness_spread >= 0 and model.sharpness_depth >= 0
                and model.sharpness_depth_spread >= 0 and model.sharpness_tail >= 0
                and model.validation_fields >= 0):
            raise ValueError("a field is out of its range (spreads, gain, saturation and side_reach positive, "
                             "side_max in [0.5, 1))")
        return model

    @classmethod
    def conservative(cls, saturation: float) -> "ErrorModel":
        """For a model whose file has no measured error: wide spreads and a side seldom trusted."""
        return cls(floor=0.1 * saturation, gain=1.0, sigma0=0.1 * saturation, sigma_slope=0.2, saturation=saturation,
                   side_max=0.8, side_reach=0.2 * saturation, validation_images=0, field_spread=0.1 * saturation,
                   measured=False)

    def field_offsets(self, count: int = 15) -> tuple[np.ndarray, np.ndarray]:
        """Field offsets over +-4 measured spreads and the log of their prior weights: Student's
        t, for now and then a field far unlike the held-out images, as wide as the held-out
        fields leave its spread plausible (as in `resolves`)."""
        offsets = np.linspace(-4, 4, count) * self.field_spread
        plausible = self.field_spread * spread_upper_bound(self.validation_fields or self.validation_images)
        log_prior = student_t_log_density(offsets / max(plausible, 1e-9))
        return offsets, log_prior - log_sum_exp(log_prior)

    def log_likelihood(self, distance: float, defocus: float, p_positive: float | None, tiles: int,
                       tile_spread: float, candidates: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """log P(what a frame showed | its true defocus is each of `candidates`, its field's
        offset each of `offsets`), shape (offsets, candidates): the median distance, its side
        (a split head's p_positive, else the sign of `defocus`), from `tiles` tiles whose
        distances spread by `tile_spread` (standard deviation)."""
        true_distance = np.abs(candidates)
        fit = self.sigma(true_distance) * math.sqrt(2 / max(self.validation_images, 2))
        sigma = np.sqrt((MEDIAN_EFFICIENCY * tile_spread / math.sqrt(max(tiles, 1))) ** 2 + fit**2)
        # Student's t with 3 degrees of freedom rather than a normal: a frame now and then reads
        # far off, and one such frame must not outweigh the rest
        expected = self.mean_distance(true_distance) * np.maximum(1 + offsets[:, None] / self.field_scale(), 0.0)
        z = (distance - expected) / sigma
        log_likelihood = student_t_log_density(z) - np.log(sigma)
        # beyond the trained range the held-out images say nothing of the side: no evidence there
        right = np.where(true_distance <= self.saturation, self.side_accuracy(true_distance), 0.5)
        if p_positive is not None:
            # a split head's log-odds, trusted as far as its side was found reliable at each distance
            # on the held-out images (near focus, little) and never beyond the most reliable it was
            log_odds = math.log(np.clip(p_positive, 1e-4, 1 - 1e-4) / np.clip(1 - p_positive, 1e-4, 1))
            reliability = (right - 0.5) / max(self.side_max - 0.5, 1e-6)
            limit = math.log(self.side_max / (1 - self.side_max))
            side_log_odds = np.clip(log_odds * reliability, -limit, limit) * np.sign(candidates)
            log_likelihood -= np.log1p(np.exp(-side_log_odds))
        else:
            log_likelihood += np.log(np.where(np.sign(candidates) == math.copysign(1, defocus), right, 1 - right))
        return log_likelihood

    def describe(self, unit: str) -> str:
        return (f"distance read at focus {self.gain * self.floor:.3f} {unit}, spread of one tile "
                f"{self.sigma0:.3f} {unit} + {self.sigma_slope:.3f} x distance (between fields "
                f"{self.field_spread:.3f} {unit}), flat beyond {self.saturation:.3f} {unit}; side right far from "
                f"focus {self.side_max:.0%}, two thirds of that margin within {self.side_reach:.3f} {unit}; "
                + (f"log sharpness a dip {self.sharpness_width:.3f} {unit} wide peaking at {self.sharpness_center:+.3f} "
                   f"{unit}, {self.sharpness_depth:.2f} +- {self.sharpness_depth_spread:.2f} deep, images off it by "
                   f"{self.sharpness_spread:.3f}"
                   + (f", twice that {self.sharpness_tail:.1f} widths out" if self.sharpness_tail > 0 else "")
                   + "; " if self.sharpness_width > 0 else "")
                + f"from {self.validation_images} held-out images"
                + (f" of {self.validation_fields} fields" if self.validation_fields else ""))


def fit_error_model(labels: np.ndarray, distances: np.ndarray, signed: np.ndarray, saturation: float,
                    sharpness: np.ndarray | None = None, fields: np.ndarray | None = None) -> ErrorModel:
    """The error model of a network's validation predictions: true signed `labels`, predicted
    `distances` (a split head's, or |prediction|) and signed predictions `signed`; with the
    images' `sharpness` (sharpness.log_sharpness) and `fields` (one key per field imaged at
    several heights), the sharpness curve (sharpness.fit_sharpness_curve).

    The mean by least absolute deviations over a grid of floor and gain; the spread by least
    squares on the absolute residuals (times sqrt(pi/2), the ratio of a normal spread to its
    mean absolute value); the side's curve by maximum likelihood over a grid, its ceiling
    below 1 by one image's worth (no network is certain from a few dozen images)."""
    true = np.abs(np.asarray(labels, dtype=np.float64))
    distances = np.asarray(distances, dtype=np.float64)
    best = (math.inf, 0.0, 1.0)
    for floor in np.linspace(0, 0.3 * saturation, 31):
        for gain in np.linspace(0.6, 1.4, 41):
            loss = np.abs(distances - expected_distance(true, floor, gain, saturation)).sum()
            best = min(best, (loss, floor, gain))
    _, floor, gain = best
    residual = np.abs(distances - expected_distance(true, floor, gain, saturation)) * math.sqrt(math.pi / 2)
    basis = np.stack([np.ones_like(true), np.minimum(true, saturation)], axis=1)
    sigma0, sigma_slope = np.linalg.lstsq(basis, residual, rcond=None)[0]
    sigma0, sigma_slope = max(float(sigma0), 0.02 * saturation), max(float(sigma_slope), 0.0)

    sided = true > 0
    right = (np.sign(signed) == np.sign(labels))[sided]
    best_side = (-math.inf, 0.5, saturation)
    for side_max in np.linspace(0.5, 1 - 1 / (sided.sum() + 2), 50):
        for side_reach in np.linspace(0.02, 1.0, 50) * saturation:
            accuracy = 0.5 + (side_max - 0.5) * (1 - np.exp(-true[sided] / side_reach))
            log_likelihood = float(np.sum(np.where(right, np.log(accuracy), np.log(1 - accuracy))))
            best_side = max(best_side, (log_likelihood, side_max, side_reach))
    _, side_max, side_reach = best_side

    inside = true < saturation
    residual = (distances - expected_distance(true, floor, gain, saturation))[inside]
    field_spread = robust_spread(residual) if inside.sum() >= 5 else sigma0
    curve = None if sharpness is None or fields is None else fit_sharpness_curve(labels, sharpness, fields)
    width, center, spread, depth, depth_spread, tail = curve or (0.0,) * 6
    return ErrorModel(float(floor), float(gain), sigma0, sigma_slope, float(saturation), float(side_max),
                      float(side_reach), int(len(true)), max(field_spread, 0.01 * saturation), width, center, spread,
                      depth, depth_spread, tail, 0 if fields is None else len(set(fields)))
