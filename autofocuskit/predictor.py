"""The autofocus's eyes: an exported model applied to whole camera frames, one estimate of
defocus per frame. Without torch: numpy and ONNX Runtime are all a microscope's computer
needs. loop.py moves the stage by what it says; focus.py is its command line.

    from autofocuskit import FocusPredictor, focus_loop
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
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli import UserError
from .error_model import ErrorModel
from .exported_model import (DISTANCE_OUTPUT, IMAGE_INPUT, OBJECTIVE_INPUT, SIDE_OUTPUT, SIGNED_OUTPUT, ModelMetadata,
                             calibrated_offset_um, open_session, read_metadata)
from .imaging import (IMAGE_SIZE, MAX_CLIPPED, MIN_CONTRAST, as_uint8, has_content, resample, rgb_uint8,
                      robust_spread, tile_origins)
from .sharpness import log_sharpness
from .schema import (CAMERA_PIXEL_UM, REFRACTIVE_INDEX, WAVELENGTH_UM, depth_of_field_um, objective_name,
                     objective_of_name, objective_problem)

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
    log_sharpness: float = math.nan  # the frame's own sharpness (sharpness.log_sharpness of its usable tiles)


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

    def __init__(self, model_path, *, magnification: float | None = None, na: float | None = None,
                 dof_um: float | None = None, wavelength_um: float = WAVELENGTH_UM,
                 refractive_index: float = REFRACTIVE_INDEX, camera_pixel_um: float = CAMERA_PIXEL_UM,
                 tiles_per_side: int = 4, stride: int | None = None, min_tiles: int = 3,
                 min_contrast: float = MIN_CONTRAST, max_clipped: float = MAX_CLIPPED,
                 max_distance_um: float | None = None, threads: int = 0, pixel_size_um: float | None = None,
                 bit_depth: int | None = None, offset_um: float | None = None):
        self.model_path = Path(model_path)
        self.session = open_session(self.model_path, threads=threads)
        inputs = {node.name: node for node in self.session.get_inputs()}
        self.outputs = [node.name for node in self.session.get_outputs()]
        self.is_moaf = OBJECTIVE_INPUT in inputs
        self.to_um, self.params = 1.0, None
        if self.is_moaf:
            if magnification is None or na is None:
                raise FocusError(f"{model_path} is a MOAF model: give the objective's magnification and na")
            if objective_problem(magnification, na):
                raise FocusError(objective_problem(magnification, na))
            self.params = np.array([[magnification, na]], dtype=np.float32)
            self.to_um = dof_um or depth_of_field_um(magnification, na, wavelength_um, refractive_index,
                                                     camera_pixel_um)
        metadata = read_metadata(self.session, self.model_path)
        trained_max = metadata.label_abs_max * self.to_um if metadata.label_abs_max is not None else None
        self.max_distance_um = max_distance_um if max_distance_um is not None else trained_max
        self.tiles_per_side, self.stride, self.min_tiles = tiles_per_side, stride, min_tiles
        self.min_contrast, self.max_clipped = min_contrast, max_clipped
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

    def network_error_model(self, metadata: ModelMetadata) -> ErrorModel:
        """The error measured on the held-out images when the model was exported (in um), or,
        for a file without one, a conservative default and a warning."""
        if metadata.error_model is not None:
            return metadata.error_model.in_um(self.to_um)
        saturation = self.max_distance_um or 10 * (self.dof_um or 10.0)
        warnings.warn(f"{self.model_path} has no measured error model (myModel.py's test export, or a file written "
                      "before the files had one): the focus loop assumes a wide error and may need more images; "
                      "export it with myTest.py", stacklevel=3)
        return ErrorModel.conservative(saturation)

    def set_pixel_size(self, pixel_size_um: float | None) -> None:
        """The pixel size (um in the specimen) of the frames to come; None: use them as they are."""
        self.scale, self.pixel_size_um = None, pixel_size_um
        if pixel_size_um is None:
            return
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise FocusError(f"the pixel size must be a positive number of um, got {pixel_size_um}")
        if self.trained_pixel_um is None:
            warnings.warn("the model's file does not record the pixel size it was trained at: frames are used "
                          "at their own sampling", stacklevel=2)
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
        usable = [tile for tile in tiles if has_content(tile, self.min_contrast, self.max_clipped)]
        return np.stack(usable) if usable else np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), len(origins)

    def run_tiles(self, tiles: np.ndarray) -> dict:
        """The model's outputs for a batch of uint8 tiles, by output name, (N,) each, in um where a length."""
        images = tiles.transpose(0, 3, 1, 2).astype(np.float32)  # (N, 3, 224, 224), as ToTensor gives
        images /= np.float32(255)
        feeds = {IMAGE_INPUT: images}
        if self.is_moaf:
            feeds[OBJECTIVE_INPUT] = np.repeat(self.params, len(tiles), axis=0)
        outputs = dict(zip(self.outputs, (output.reshape(-1) for output in self.session.run(None, feeds))))
        for name in (SIGNED_OUTPUT, DISTANCE_OUTPUT):
            if name in outputs:
                outputs[name] = outputs[name] * self.to_um
        return outputs

    def predict(self, frame: np.ndarray) -> FocusEstimate:
        tiles, total = self.tiles(frame)
        if len(tiles) < self.min_tiles:
            reason = (f"{len(tiles)} of {total} tiles have content (contrast of at least {self.min_contrast:g} grey "
                      f"levels, at most {self.max_clipped:.0%} clipped), fewer than min_tiles {self.min_tiles}")
            return FocusEstimate(math.nan, "no_sample", math.nan, None, math.nan, len(tiles), total, reason)
        sharpness = log_sharpness(tiles)  # before the network, while the tiles are in the CPU's cache
        estimate = self.combine(self.run_tiles(tiles), total)
        estimate.log_sharpness = sharpness
        return estimate

    def combine(self, outputs: dict, total: int) -> FocusEstimate:
        """One estimate from the tiles' predictions: the median distance (the split head's, or
        the signed head's |prediction|: tiles unsure of the side still see the blur); the side
        from the mean log-odds (split head) or the median signed prediction (signed head)."""
        signed = outputs[SIGNED_OUTPUT]
        if SIDE_OUTPUT in outputs:
            distance = float(np.median(outputs[DISTANCE_OUTPUT]))
            probabilities = np.clip(outputs[SIDE_OUTPUT], 1e-6, 1 - 1e-6)
            p_positive = float(1 / (1 + np.exp(-np.mean(np.log(probabilities / (1 - probabilities))))))
            defocus = distance if p_positive >= 0.5 else -distance
        else:
            distance, p_positive = float(np.median(np.abs(signed))), None
            defocus = math.copysign(distance, float(np.median(signed)))
        if self.offset_um:
            defocus -= self.offset_um
            distance = abs(defocus)
        spread = robust_spread(signed)
        distances = outputs[DISTANCE_OUTPUT] if DISTANCE_OUTPUT in outputs else np.abs(signed)
        distance_spread = robust_spread(distances)
        beyond = self.max_distance_um is not None and distance > self.max_distance_um
        reason = (f"distance {distance:.2f} um is beyond the largest trained on, {self.max_distance_um:.2f} um"
                  if beyond else "")
        return FocusEstimate(defocus, "out_of_range" if beyond else "ok", distance, p_positive, spread,
                             len(signed), total, reason, distance_spread)


def trained_pixel_size(metadata: ModelMetadata, magnification: float | None, na: float | None) -> float | None:
    """The specimen pixel size (um) a model was trained at, from its file's metadata: the
    objective's entry, else (a MOAF model, another objective) the camera pixel over the
    magnification; None where the file does not say."""
    sizes = metadata.pixel_size_um
    if magnification is not None and na is not None:
        if objective_name(magnification, na) in sizes:
            return sizes[objective_name(magnification, na)]
        if metadata.camera_pixel_um is not None:
            return metadata.camera_pixel_um / magnification
    return next(iter(sizes.values())) if len(sizes) == 1 else None


def trained_dof_um(metadata: ModelMetadata) -> float | None:
    """The depth of field of a SOAF model's objective, by the formula, where its file names one objective."""
    if len(metadata.pixel_size_um) != 1:
        return None
    magnification, na = objective_of_name(next(iter(metadata.pixel_size_um)))
    return depth_of_field_um(magnification, na, camera_pixel_um=metadata.camera_pixel_um or CAMERA_PIXEL_UM)


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
