"""The autofocus: an exported model applied to whole camera frames, and the loop that moves
the stage by what it says. Without torch: numpy and ONNX Runtime are all a microscope's
computer needs. focus.py is its command line.

    from autofocus import FocusPredictor, focus_loop
    predictor = FocusPredictor("model.onnx")                                   # SOAF model: um
    predictor = FocusPredictor("moaf.onnx", magnification=20, na=0.7)          # MOAF: the objective is required
    estimate = predictor.predict(frame)        # numpy (H, W) or (H, W, 3), uint8, uint16 or float
    estimate.defocus_um, estimate.status       # move the stage by -defocus_um; "ok", "no_sample", "out_of_range"
    result = focus_loop(acquire, move_by, predictor, tolerance_um=1.0)

A frame is resampled to the specimen pixel size the network was trained at (when the frame's
pixel size is given and the model's file records its own), cut into a grid of 224x224 tiles,
brought to the network's input as the dataset classes do (integers scaled by the camera's
bit depth, 16 bits unless told, grey to RGB), tiles without content (blank,
background, saturated) are left out and the rest run as one ONNX batch. Their predictions
are combined robustly: the median distance (for the signed head, the median |prediction|)
and the side from the mean log-odds (split head) or the median prediction (signed head);
the spread between tiles is reported with the estimate.
"""
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cli import UserError
from error_model import STUDENT_DOF, ErrorModel
from exported_model import open_session
from imaging import (IMAGE_SIZE, MAD_TO_SD, MAX_SATURATED, MIN_CONTRAST, as_uint8, has_content, resample, rgb_uint8,
                     tile_origins)
from schema import CAMERA_PIXEL_UM, REFRACTIVE_INDEX, WAVELENGTH_UM, depth_of_field_um, objective_name, objective_of_name

MAX_COARSER = 2.0  # frames up to this many times coarser than the trained pixel are interpolated; beyond, refused


class FocusError(UserError, ValueError):
    """A frame or model the predictor cannot use; nothing is moved."""


@dataclass
class FocusEstimate:
    """What one frame says about focus. Moving the stage by -defocus_um focuses."""

    defocus_um: float  # signed, as defocus_label; nan when status is "no_sample"
    status: str  # "ok", "no_sample" (too few tiles with content) or "out_of_range" (beyond the trained range)
    distance_um: float  # how far from focus, whatever the side
    p_positive: float | None  # probability that defocus_um > 0; None for a signed-head model
    spread_um: float  # robust spread of the tiles' signed predictions (MAD_TO_SD x median absolute deviation)
    tiles_used: int
    tiles_total: int
    reason: str = ""  # why the status is not "ok", in words
    distance_spread_um: float = 0.0  # the same of the tiles' distances


# why focus_loop stopped: FocusResult.stop_reason
STOP_REASONS = {
    "within_tolerance": "in focus within the tolerance with the probability asked for",
    "no_sample": "too few tiles with content: no further move",
    "at_limit": "focus lies beyond z_range_um: the stage stopped at the limit, then went to the place rated closest",
    "images_used_up": "max_images frames were taken: the stage went to the place rated closest",
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

    @property
    def moved_um(self) -> float:
        """Where the loop left the stage, relative to where it started."""
        return float(sum(self.moves_um))


class FocusPredictor:
    """An exported autofocus model (myTest.py's fp32 ONNX file) applied to whole camera frames.

    - SOAF models predict micrometres; MOAF models predict depths of field and need the
      objective (`magnification`, `na`); their DOF is `dof_um` if given, else the formula
      with `wavelength_um`, `refractive_index` and `camera_pixel_um`.
    - Tiles: `tiles_per_side` evenly spread per axis, or every `stride` pixels.
    - A tile counts if `has_content`; fewer than `min_tiles` usable tiles: status "no_sample".
    - A distance beyond the largest |label| the model was trained on (from the file's
      metadata, or `max_distance_um`): status "out_of_range".
    - `pixel_size_um`: the frames' pixel size in the specimen (camera pixel x binning /
      magnification; Micro-Manager's pixel size). Frames are resampled to the one the model
      was trained at (its file's metadata); up to MAX_COARSER times coarser, else FocusError.
      None: frames are used as they come. `set_pixel_size` changes it (another objective).
    - `bit_depth`: the camera's bits per pixel, for 10-14 bit cameras in 16-bit frames.
    - `offset_um` is taken off every estimate: a microscope's calibration of the model
      (micromanager.calibrate), read from the file beside the model unless given.
    """

    def __init__(self, model_path, magnification: float | None = None, na: float | None = None,
                 dof_um: float | None = None, wavelength_um: float = WAVELENGTH_UM,
                 refractive_index: float = REFRACTIVE_INDEX, camera_pixel_um: float = CAMERA_PIXEL_UM,
                 tiles_per_side: int = 4, stride: int | None = None, min_tiles: int = 3,
                 min_contrast: float = MIN_CONTRAST, max_saturated: float = MAX_SATURATED,
                 max_distance_um: float | None = None, threads: int = 0, pixel_size_um: float | None = None,
                 bit_depth: int | None = None, offset_um: float | None = None):
        self.model_path = Path(model_path)
        self.session = open_session(self.model_path, threads=threads)
        inputs = {node.name: node for node in self.session.get_inputs()}
        self.outputs = [node.name for node in self.session.get_outputs()]
        self.is_moaf = "params" in inputs
        self.to_um, self.params = 1.0, None
        if self.is_moaf:
            if magnification is None or na is None:
                raise FocusError(f"{model_path} is a MOAF model: give the objective's magnification and na")
            if not (magnification > 0 and 0 < na < 2):
                raise FocusError(f"magnification must be above 0 and na in (0, 2), got {magnification} and {na}")
            self.params = np.array([[magnification, na]], dtype=np.float32)
            self.to_um = dof_um or depth_of_field_um(magnification, na, wavelength_um, refractive_index,
                                                     camera_pixel_um)
        metadata = self.session.get_modelmeta().custom_metadata_map
        trained_max = float(metadata["label_abs_max"]) * self.to_um if "label_abs_max" in metadata else None
        self.max_distance_um = max_distance_um if max_distance_um is not None else trained_max
        self.tiles_per_side, self.stride, self.min_tiles = tiles_per_side, stride, min_tiles
        self.min_contrast, self.max_saturated = min_contrast, max_saturated
        if bit_depth is not None and not 1 <= bit_depth <= 16:
            raise FocusError(f"bit_depth must be 1 to 16, got {bit_depth}")
        self.bit_depth = bit_depth
        self.objective = objective_name(magnification, na) if self.is_moaf else None
        self.offset_um = offset_um if offset_um is not None else calibrated_offset_um(self.model_path, self.objective)
        self.trained_pixel_um = trained_pixel_size(metadata, magnification, na)
        self.dof_um = self.to_um if self.is_moaf else trained_dof_um(metadata)  # None where the file cannot tell
        self.error_model = self.network_error_model(metadata)
        self.scale = None  # frame size -> the trained sampling's; None: frames are used as they come
        self.set_pixel_size(pixel_size_um)

    def network_error_model(self, metadata: dict) -> ErrorModel:
        """The error measured on the validation split when the model was exported (in um), or,
        for a file without one, a conservative default and a warning."""
        if "error_model" in metadata:
            return ErrorModel.from_metadata(metadata["error_model"]).in_um(self.to_um)
        saturation = self.max_distance_um or 10 * (self.dof_um or 10.0)
        warnings.warn("the model's file has no measured error model (exported before it did): the focus loop "
                      "assumes a wide error and may need more images; export it again with myTest.py", stacklevel=3)
        return ErrorModel.conservative(saturation)

    def set_pixel_size(self, pixel_size_um: float | None) -> None:
        """The pixel size (um in the specimen) of the frames to come; None: use them as they are."""
        self.scale, self.pixel_size_um = None, pixel_size_um
        if pixel_size_um is None:
            return
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise FocusError(f"the pixel size must be a positive number of um, got {pixel_size_um}")
        if self.trained_pixel_um is None:
            warnings.warn("the model's file does not record the pixel size it was trained at (exported before "
                          "it did): frames are used at their own sampling", stacklevel=2)
            return
        scale = pixel_size_um / self.trained_pixel_um
        if scale > MAX_COARSER:
            raise FocusError(
                f"frames of {pixel_size_um:.4g} um pixels are {scale:.1f}x coarser than the {self.trained_pixel_um:.4g} "
                f"um the network was trained at: blur finer than a pixel is gone and cannot be interpolated back "
                f"(at most {MAX_COARSER:g}x); use a higher magnification or less binning")
        self.scale = None if abs(scale - 1) < 0.01 else scale

    def tiles(self, frame: np.ndarray) -> tuple[np.ndarray, int]:
        """(usable tiles as an (N, 224, 224, 3) uint8 array, number of tiles cut)."""
        frame = check_frame(frame)
        float_max = float(frame.max()) if frame.dtype.kind == "f" else None  # one scale for the whole frame
        if self.scale is not None:
            frame = resample(as_uint8(frame, float_max, self.bit_depth), self.scale)
            if min(frame.shape[:2]) < IMAGE_SIZE:
                raise FocusError(f"the frame resampled to the trained pixel size is {frame.shape[1]} x "
                                 f"{frame.shape[0]} pixels, smaller than one {IMAGE_SIZE}-pixel tile")
        origins = tile_origins(frame.shape[0], frame.shape[1], self.tiles_per_side, self.stride)
        tiles = [rgb_uint8(frame[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE], float_max, self.bit_depth) for y, x in origins]
        usable = [tile for tile in tiles if has_content(tile, self.min_contrast, self.max_saturated)]
        return np.stack(usable) if usable else np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), len(origins)

    def run_tiles(self, tiles: np.ndarray) -> dict:
        """The model's outputs for a batch of uint8 tiles, by output name, (N,) each, in um where a length."""
        images = tiles.transpose(0, 3, 1, 2).astype(np.float32)  # (N, 3, 224, 224), as ToTensor gives
        images /= np.float32(255)
        feeds = {"input": images}
        if self.is_moaf:
            feeds["params"] = np.repeat(self.params, len(tiles), axis=0)
        outputs = dict(zip(self.outputs, (output.reshape(-1) for output in self.session.run(None, feeds))))
        for name in ("output", "distance"):
            if name in outputs:
                outputs[name] = outputs[name] * self.to_um
        return outputs

    def predict(self, frame: np.ndarray) -> FocusEstimate:
        tiles, total = self.tiles(frame)
        if len(tiles) < self.min_tiles:
            reason = (f"{len(tiles)} of {total} tiles have content (contrast of at least {self.min_contrast:g} grey "
                      f"levels, at most {self.max_saturated:.0%} clipped), fewer than min_tiles {self.min_tiles}")
            return FocusEstimate(math.nan, "no_sample", math.nan, None, math.nan, len(tiles), total, reason)
        return self.combine(self.run_tiles(tiles), total)

    def combine(self, outputs: dict, total: int) -> FocusEstimate:
        """One estimate from the tiles' predictions: the median distance (the split head's, or
        the signed head's |prediction|: tiles unsure of the side still see the blur); the side
        from the mean log-odds (split head) or the median signed prediction (signed head)."""
        signed = outputs["output"]
        if "p_positive" in outputs:
            distance = float(np.median(outputs["distance"]))
            probabilities = np.clip(outputs["p_positive"], 1e-6, 1 - 1e-6)
            p_positive = float(1 / (1 + np.exp(-np.mean(np.log(probabilities / (1 - probabilities))))))
            defocus = distance if p_positive >= 0.5 else -distance
        else:
            distance, p_positive = float(np.median(np.abs(signed))), None
            defocus = math.copysign(distance, float(np.median(signed)))
        if self.offset_um:
            defocus -= self.offset_um
            distance = abs(defocus)
        spread = float(MAD_TO_SD * np.median(np.abs(signed - np.median(signed))))
        distances = outputs["distance"] if "distance" in outputs else np.abs(signed)
        distance_spread = float(MAD_TO_SD * np.median(np.abs(distances - np.median(distances))))
        beyond = self.max_distance_um is not None and distance > self.max_distance_um
        reason = (f"distance {distance:.2f} um is beyond the largest trained on, {self.max_distance_um:.2f} um"
                  if beyond else "")
        return FocusEstimate(defocus, "out_of_range" if beyond else "ok", distance, p_positive, spread,
                             len(signed), total, reason, distance_spread)


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


def calibration_file(model_path) -> Path:
    """Where micromanager.calibrate saves a microscope's calibration of a model: beside it."""
    return Path(model_path).with_suffix(".calibration.json")


def calibrated_offset_um(model_path, objective: str | None) -> float:
    """The offset a saved calibration found for this model (and objective, for MOAF); 0 without one."""
    path = calibration_file(model_path)
    if not path.is_file():
        return 0.0
    try:
        saved = json.loads(path.read_text())
        return float(saved["offset_um"]) if saved.get("objective") == objective else 0.0
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FocusError(f"cannot read the calibration {path}: {error}") from None


def trained_pixel_size(metadata: dict, magnification: float | None, na: float | None) -> float | None:
    """The specimen pixel size (um) a model was trained at, from its file's metadata: the
    objective's entry, else (a MOAF model, another objective) the camera pixel over the
    magnification; None where the file does not say."""
    sizes = json.loads(metadata.get("pixel_size_um", "{}"))
    if magnification is not None and na is not None:
        if objective_name(magnification, na) in sizes:
            return sizes[objective_name(magnification, na)]
        if "camera_pixel_um" in metadata:
            return float(metadata["camera_pixel_um"]) / magnification
    return next(iter(sizes.values())) if len(sizes) == 1 else None


def trained_dof_um(metadata: dict) -> float | None:
    """The depth of field of a SOAF model's objective, by the formula, where its file names one objective."""
    sizes = json.loads(metadata.get("pixel_size_um", "{}"))
    if len(sizes) != 1:
        return None
    magnification, na = objective_of_name(next(iter(sizes)))
    return depth_of_field_um(magnification, na, camera_pixel_um=float(metadata.get("camera_pixel_um", CAMERA_PIXEL_UM)))


def check_frame(frame) -> np.ndarray:
    """The frame as a numpy array, or FocusError naming what is wrong with it."""
    frame = np.asarray(frame)
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3)):
        raise FocusError(f"a frame must be (H, W) grey or (H, W, 3) RGB, got shape {frame.shape}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if min(frame.shape[:2]) < IMAGE_SIZE:
        raise FocusError(f"a frame must be at least {IMAGE_SIZE} x {IMAGE_SIZE} pixels, got {frame.shape[1]} x "
                         f"{frame.shape[0]}")
    if frame.dtype.kind not in "uif":
        raise FocusError(f"a frame must hold integers or floats, got {frame.dtype}")
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        raise FocusError("the frame holds NaN or infinite values")
    return frame


# a field focused before may read unlike it did then (the specimen changed, the stage came back
# elsewhere): this much of its offset's prior stays the population's
FIELD_CHANGE = 0.2
CONFIDENCE = 0.8  # focus_loop stops when the stage is within the tolerance with at least this probability


def focus_loop(acquire, move_by, predictor: FocusPredictor, tolerance_um: float, max_images: int = 5,
               max_step_um: float | None = None, confidence: float = CONFIDENCE,
               z_range_um: tuple[float, float] | None = None, z_um=None,
               prior_sd_um: float | None = None, field_log_prior: np.ndarray | None = None) -> FocusResult:
    """Focus by inference: after every frame, the probability of each candidate focus position
    given everything seen so far (where the stage stood for each frame, and what its tiles
    said), from the network's measured error (`predictor.error_model`: its floor near focus,
    its spread, where it saturates, how reliable its side is). `acquire()` returns a frame,
    `move_by(delta_um)` moves the stage relative to where it is.

    - Stop when the stage is within `tolerance_um` of focus with probability `confidence`,
      counting a last small move (at most twice the tolerance, not imaged) to the position
      most likely in focus. Otherwise move there (at most `max_step_um`) and take another frame;
      if that is where the stage is already, step to the likeliest place beyond the tolerance
      instead, so that the next frame tells something new.
    - What the old rules of thumb did falls out of the same model: a move that made the blur
      grow went the wrong way; a distance that does not change is the network's floor near
      focus or its saturation far away; a coin-flip side is tried, and undone when wrong.
    - "no_sample" (too few tiles with content): no further move, the loop stops.
    - With the images used up, the stage stands at the position most likely in focus among
      those imaged and the one computed from them all.
    - `z_range_um` (low, high), in the units of `z_um()`, which reads the stage: no move
      leaves it; one that would stops at the limit (`at_limit`), and if focus still lies
      beyond, the loop stops there ("at_limit"). A start outside the range: FocusError, no move.
    - An error (a bad frame, a camera or stage error) propagates before any further move.
    - `prior_sd_um`: focus is known to lie near the start, give or take this much (a
      position focused before, drifting since): a Student's t prior of that scale; without
      it, every candidate position is as likely before the first frame.
    - `field_log_prior`: an earlier loop's `result.field_log_posterior` on the same field:
      how long or short this field reads is known, so a frame near focus tells the distance.
    `result.p_in_focus` is the last probability of being within the tolerance.
    """
    stage = LimitedStage(move_by, max_step_um, z_range_um, z_um)
    model = predictor.error_model
    # focus positions relative to the start: as far out as the network's range, and the moves, may reach
    candidates = focus_candidates((2 + max_images) * model.saturation, tolerance_um)
    offsets, log_prior = model.field_offsets()
    if field_log_prior is not None:
        log_prior = field_seen_before(log_prior, field_log_prior)
    log_joint = np.repeat(log_prior[:, None], len(candidates), axis=1)  # field offset x focus position
    if prior_sd_um:
        log_joint -= 2 * np.log1p((candidates / prior_sd_um) ** 2 / STUDENT_DOF)
    result = FocusResult(converged=False, images=0)
    imaged = []  # where each usable frame was taken, relative to the start
    for _ in range(max_images):
        estimate = predictor.predict(acquire())
        result.images += 1
        result.estimates.append(estimate)
        if estimate.status == "no_sample":
            result.stop_reason = "no_sample"
            break
        here = stage.moved_um
        imaged.append(here)
        log_joint += model.log_likelihood(estimate.distance_um, estimate.defocus_um, estimate.p_positive,
                                          estimate.tiles_used, estimate.distance_spread_um, here - candidates, offsets)
        log_posterior = np.log(np.exp(log_joint - log_joint.max()).sum(axis=0) + 1e-300)  # field offsets summed out
        in_focus = probability_in_focus(log_posterior, candidates, tolerance_um)
        target, result.p_in_focus = likeliest_in_focus(in_focus, candidates, here)
        if result.p_in_focus >= confidence and abs(target - here) <= 2 * tolerance_um:
            stage.move(target - here)
            result.converged, result.stop_reason = True, "within_tolerance"
            break
        if result.images == max_images:
            break
        if abs(target - here) < tolerance_um / 2:
            elsewhere = np.abs(candidates - here) > tolerance_um
            target = float(candidates[elsewhere][np.argmax(log_posterior[elsewhere])])
        if not stage.move(target - here) and stage.at_limit:
            result.stop_reason = "at_limit"  # already at the limit, and focus lies beyond it
            break
    if not result.converged and imaged:
        options = [*imaged, float(candidates[int(np.argmax(in_focus))])]  # by the last frame's posterior
        chosen = max(reversed(options), key=lambda place: float(np.interp(place, candidates, in_focus)))
        stage.move(chosen - stage.moved_um)
        result.p_in_focus = float(np.interp(stage.moved_um, candidates, in_focus))
    result.moves_um, result.at_limit = stage.moves_um, stage.at_limit
    if imaged:
        field = np.logaddexp.reduce(log_joint, axis=1)  # focus positions summed out
        result.field_log_posterior = field - np.logaddexp.reduce(field)
    return result


def field_seen_before(population: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The log prior of a field's offset when an earlier loop on it learnt `seen` (its
    result's field_log_posterior), kept open by FIELD_CHANGE to the population's `population`."""
    seen = np.asarray(seen, dtype=np.float64)
    if seen.shape != population.shape:
        raise ValueError(f"field_log_prior has {seen.size} values, the error model's field offsets {population.size}: "
                         "it must be a field_log_posterior of a loop with the same predictor")
    return np.logaddexp(math.log(1 - FIELD_CHANGE) + seen, math.log(FIELD_CHANGE) + population)


def focus_candidates(reach_um: float, tolerance_um: float, points: int = 3001) -> np.ndarray:
    """Candidate focus positions relative to the start, `reach_um` either side, a tenth of the
    tolerance apart or as many as `points` allow."""
    step = max(tolerance_um / 10, 2 * reach_um / (points - 1))
    return np.arange(-reach_um, reach_um + step / 2, step)


def likeliest_in_focus(in_focus: np.ndarray, candidates: np.ndarray, here: float) -> tuple[float, float]:
    """(the position most likely in focus, that probability); of positions as likely within a
    thousandth (where the network saturates, all those beyond its range), the nearest."""
    best = in_focus.max()
    near_best = np.flatnonzero(in_focus >= best * 0.999)
    chosen = near_best[np.argmin(np.abs(candidates[near_best] - here))]
    return float(candidates[chosen]), float(in_focus[chosen])


def probability_in_focus(log_posterior: np.ndarray, candidates: np.ndarray, tolerance_um: float) -> np.ndarray:
    """For the stage at each candidate position, the probability that focus lies within the tolerance of it."""
    posterior = np.exp(log_posterior - log_posterior.max())
    cumulative = np.concatenate([[0.0], np.cumsum(posterior)]) / posterior.sum()
    step = candidates[1] - candidates[0]
    reach = int(round(tolerance_um / step))
    index = np.arange(len(candidates))
    return cumulative[np.minimum(index + reach + 1, len(candidates))] - cumulative[np.maximum(index - reach, 0)]


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
            if not low <= high:
                raise FocusError(f"z_range_um must be (low, high) with low <= high, got {z_range_um}")
            if not low <= z_um() <= high:
                raise FocusError(f"the stage is at z = {z_um():.3f}, outside z_range_um ({low:g}, {high:g}): "
                                 "nothing moved")

    @property
    def moved_um(self) -> float:
        return float(sum(self.moves_um))

    def move(self, delta_um: float) -> float:
        """Move by `delta_um` as far as the limits allow; the move made (0 when none)."""
        delta_um = bounded(delta_um, self.max_step_um)
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


def bounded(move_um: float, max_step_um: float | None) -> float:
    return move_um if max_step_um is None else math.copysign(min(abs(move_um), max_step_um), move_um)
