"""The network as the autofocus of a Micro-Manager microscope (pymmcore-plus): focus once where
the stage is (`autofocus`), or at every position of an acquisition (`AutofocusEngine`); a z-sweep
that says whether a network can be trusted on this microscope (`calibrate`); the demo microscope
as pymmcore-plus Python devices. The only file that imports pymmcore-plus.

    from autofocus import FocusPredictor
    from micromanager import AutofocusEngine
    core.mda.set_engine(AutofocusEngine(core, FocusPredictor("model.onnx"), tolerance_um=1.0,
                                        z_range_um=(1000, 1400)))
    core.mda.run(useq.MDASequence(stage_positions=[...], time_plan=...,
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))

    python micromanager.py --model model.onnx --demo                  # an autofocused acquisition, no hardware
    python micromanager.py --model model.onnx --config MMConfig.cfg   # focus a real microscope once
    python micromanager.py --model model.onnx --config MMConfig.cfg --calibrate 40   # does it work here?

The core's camera, focus device and pixel size (its pixel-size configuration) are used as they
are set; the frames are resampled to the pixel size the network was trained at, and scaled
by the camera's bit depth.
"""
import argparse
import json
import logging
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import useq
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.core._constants import PixelFormat
from pymmcore_plus.experimental.unicore import (ShutterDevice, SimpleCameraDevice, StageDevice, UniMMCore,
                                                XYStageDevice)
from pymmcore_plus.mda import MDAEngine

from autofocus import CONFIDENCE, FocusPredictor, FocusResult, calibration_file, focus_loop, timed
from cli import UserError, positive, probability, run, writing
from focus_measures import FOCUS_MEASURES, curve_peak, focus_channel
from imaging import tile_origins
from optics import Optics, VirtualMicroscope
from schema import CAMERA_PIXEL_UM, depth_of_field_um


class MicroscopeError(UserError):
    """A core the autofocus cannot work with; nothing was moved."""


def autofocus(core: CMMCorePlus, predictor: FocusPredictor, tolerance_um: float, max_images: int = 5,
              max_step_um: float | None = None, z_range_um: tuple[float, float] | None = None,
              confidence: float = CONFIDENCE, prior_sd_um: float | None = None,
              field_log_prior: np.ndarray | None = None) -> FocusResult:
    """Focus where the stage is, with the core's camera and focus device: focus_loop on
    snapImage/getImage and relative moves of the focus device, never outside `z_range_um`
    (absolute, in the focus device's units). Frames get the core's pixel size (when it has a
    pixel-size configuration, else the predictor's own) and the camera's bit depth. A camera
    or stage error propagates with no further move. `confidence`, `prior_sd_um`,
    `field_log_prior`: as focus_loop's."""
    focus_device = check_core(core)
    use_camera_settings(core, predictor)

    def acquire() -> np.ndarray:
        core.snapImage()
        return core.getImage()

    def move_by(delta_um: float) -> None:
        core.setRelativePosition(focus_device, delta_um)
        core.waitForDevice(focus_device)

    return focus_loop(acquire, move_by, predictor, tolerance_um, max_images, max_step_um, confidence,
                      z_range_um=z_range_um, z_um=lambda: core.getPosition(focus_device), prior_sd_um=prior_sd_um,
                      field_log_prior=field_log_prior)


def check_core(core: CMMCorePlus) -> str:
    """The core's focus device, or MicroscopeError saying which device is missing."""
    if not core.getCameraDevice():
        raise MicroscopeError("the core has no camera: load one and select it with core.setCameraDevice(label)")
    focus_device = core.getFocusDevice()
    if not focus_device:
        raise MicroscopeError("the core has no focus device: load a Z stage and select it with "
                              "core.setFocusDevice(label)")
    return focus_device


def use_camera_settings(core: CMMCorePlus, predictor: FocusPredictor) -> None:
    """The camera's bit depth and the core's pixel size for the frames to come."""
    predictor.bit_depth = camera_bit_depth(core)
    pixel_size_um = core.getPixelSizeUm()
    if pixel_size_um > 0 and pixel_size_um != predictor.pixel_size_um:
        predictor.set_pixel_size(pixel_size_um)


def camera_bit_depth(core: CMMCorePlus) -> int:
    """The camera's bits per pixel: its PixelFormat property (Mono12, RGB8...) where it has one,
    as Python cameras do, else what the core reports (device adapters report the sensor's
    bits, 12 for a 12-bit camera in 16-bit frames)."""
    camera = core.getCameraDevice()
    if core.hasProperty(camera, "PixelFormat"):
        digits = re.search(r"(\d+)$", str(core.getProperty(camera, "PixelFormat")))
        if digits:
            return int(digits.group(1))
    return core.getImageBitDepth()


class AutofocusEngine(MDAEngine):
    """pymmcore-plus's acquisition engine with the network as its autofocus: every
    `useq.HardwareAutofocus` event (where a sequence's `autofocus_plan` asks for one) runs
    `autofocus`, and the z it moved is kept as the position's correction, as the engine keeps
    a hardware autofocus's: the later events at that position (other time points, z-stacks
    relative to focus) are taken at the corrected z, and the next autofocus there starts from
    it, expecting focus within `drift_um` of it (focus_loop's prior; default: the
    tolerance) and knowing how long or short its field reads from the autofocus before, so
    that a position still in focus takes one image. Each frame's metadata
    holds its position's last autofocus result under "autofocus"."""

    def __init__(self, core: CMMCorePlus, predictor: FocusPredictor, tolerance_um: float, max_images: int = 5,
                 max_step_um: float | None = None, z_range_um: tuple[float, float] | None = None,
                 confidence: float = CONFIDENCE, drift_um: float | None = None, **options):
        super().__init__(core, **options)
        self.drift_um = drift_um if drift_um is not None else tolerance_um
        self.predictor, self.tolerance_um, self.max_images = predictor, tolerance_um, max_images
        self.max_step_um, self.z_range_um, self.confidence = max_step_um, z_range_um, confidence
        self.results: dict[int | None, FocusResult] = {}  # the last autofocus at each position index

    def setup_sequence(self, sequence: useq.MDASequence):
        self.results.clear()
        return super().setup_sequence(sequence)

    def exec_event(self, event: useq.MDAEvent):
        if isinstance(event.action, useq.HardwareAutofocus):
            self.focus_position(event.index.get("p"))
            return ()
        return super().exec_event(event)

    def focus_position(self, position: int | None) -> FocusResult:
        core = self.mmcore
        start = core.getZPosition()
        before = self.results.get(position)
        focused_before = before is not None and before.converged
        result = autofocus(core, self.predictor, self.tolerance_um, self.max_images, self.max_step_um,
                           self.z_range_um, self.confidence, self.drift_um if focused_before else None,
                           before.field_log_posterior if before is not None else None)
        self._z_correction[position] = self._z_correction.get(position, 0.0) + core.getZPosition() - start
        self.results[position] = result
        return result

    def _set_event_z(self, event: useq.MDAEvent) -> None:
        """The engine's own z moves (each event's z plus its position's correction) kept in
        `z_range_um` as the autofocus's are: one outside stops the acquisition before it moves."""
        if self.z_range_um is not None:
            z_um = event.z_pos + self._z_correction.get(event.index.get("p"), 0.0)
            low, high = self.z_range_um
            if not low <= z_um <= high:
                raise MicroscopeError(f"event {dict(event.index)} asks for z = {z_um:.2f}, outside z_range_um "
                                      f"({low:g}, {high:g}): the acquisition stops there, the stage not moved")
        super()._set_event_z(event)

    def get_frame_metadata(self, event: useq.MDAEvent, *args, **kwargs):
        metadata = super().get_frame_metadata(event, *args, **kwargs)
        result = self.results.get(event.index.get("p"))
        if result is not None:
            metadata["autofocus"] = result_summary(result)
        return metadata


@dataclass
class Calibration:
    """How a network's estimates compare with the focus a z-sweep shows, on one microscope."""

    z_um: np.ndarray  # the sweep's stage positions
    true_defocus_um: np.ndarray  # z - the sweep's focus, as make_dataset.py labels
    estimates_um: np.ndarray  # the network's defocus per slice; nan where it gave none
    focus_z_um: float  # where the focus measure peaks
    dof_um: float
    distance_error_dof: float  # mean | |estimate| - |true| |
    side_accuracy: float  # share of slices more than half a DOF from focus whose side is right
    scale: float  # estimate ~ scale x true + offset_um, fitted by least squares
    offset_um: float

    def report(self) -> str:
        return (f"focus at z = {self.focus_z_um:.2f} um; {np.isfinite(self.estimates_um).sum()} of {len(self.z_um)} "
                f"slices with an estimate: distance error {self.distance_error_dof:.2f} DOF, side accuracy "
                f"{self.side_accuracy:.0%}, estimate = {self.scale:.2f} x true {self.offset_um:+.2f} um "
                f"(DOF {self.dof_um:.2f} um)")


def calibrate(core: CMMCorePlus, predictor: FocusPredictor, span_um: float, steps: int,
              dof_um: float | None = None, focus_measure: str = "brenner", min_peak_contrast: float = 0.3,
              z_range_um: tuple[float, float] | None = None, plot_path: Path | None = None,
              save: bool = False) -> Calibration:
    """Does this network work on this microscope? A z-sweep of `steps` slices over `span_um`
    centred where the stage is, at one position: each slice labelled as make_dataset.py labels
    (the focus measure's peak per tile, placed between slices; their median is the focus),
    against the network's estimate there. The stage returns to its start; the sweep must lie in
    `z_range_um`. `plot_path`: a PNG of estimate against true defocus; `save`: the offset goes
    into the file beside the model, which FocusPredictor applies from then on."""
    focus_device = check_core(core)
    use_camera_settings(core, predictor)
    dof_um = dof_um or predictor.dof_um
    if not dof_um:
        raise MicroscopeError("the model's file does not say its objective: give dof_um")
    start = core.getPosition(focus_device)
    z_um = start + np.linspace(-span_um / 2, span_um / 2, steps)
    if z_range_um is not None and not (z_range_um[0] <= z_um[0] and z_um[-1] <= z_range_um[1]):
        raise MicroscopeError(f"the sweep {z_um[0]:.2f}..{z_um[-1]:.2f} leaves z_range_um {z_range_um}: nothing moved")
    curves, estimates = [], []
    try:
        for z in z_um:
            core.setPosition(focus_device, float(z))
            core.waitForDevice(focus_device)
            core.snapImage()
            frame = core.getImage()
            origins = tile_origins(frame.shape[0], frame.shape[1], predictor.tiles_per_side)
            curves.append(FOCUS_MEASURES[focus_measure](focus_channel(frame), origins))
            estimates.append(predictor.predict(frame).defocus_um)
    finally:
        core.setPosition(focus_device, start)
        core.waitForDevice(focus_device)
    peaks = [peak for peak, status in (curve_peak(z_um, curve, min_peak_contrast) for curve in np.array(curves).T)
             if status == "ok"]
    if not peaks:
        raise MicroscopeError(f"no tile's focus lies inside the sweep {z_um[0]:.2f}..{z_um[-1]:.2f}: widen span_um "
                              "or start nearer focus")
    calibration = compared(z_um, float(np.median(peaks)), np.array(estimates), dof_um)
    if plot_path is not None:
        plot_calibration(calibration, plot_path)
    if save:
        path = calibration_file(predictor.model_path)
        with writing(path):
            path.write_text(json.dumps(
                {"objective": predictor.objective, "offset_um": calibration.offset_um, "scale": calibration.scale,
                 "distance_error_dof": calibration.distance_error_dof, "side_accuracy": calibration.side_accuracy},
                indent=2) + "\n")
    return calibration


def compared(z_um: np.ndarray, focus_z_um: float, estimates_um: np.ndarray, dof_um: float) -> Calibration:
    """The sweep's slices against their estimates: errors in DOF and the fitted line."""
    true = z_um - focus_z_um
    known = np.isfinite(estimates_um)
    if known.sum() < 2:
        raise MicroscopeError(f"the network gave an estimate for {known.sum()} of {len(z_um)} slices: too few to "
                              "compare (a field without tissue?)")
    distance_error = float(np.mean(np.abs(np.abs(estimates_um[known]) - np.abs(true[known])))) / dof_um
    sided = known & (np.abs(true) > dof_um / 2)
    side_accuracy = float(np.mean(np.sign(estimates_um[sided]) == np.sign(true[sided]))) if sided.any() else math.nan
    scale, offset = np.polyfit(true[known], estimates_um[known], 1)
    return Calibration(z_um, true, estimates_um, focus_z_um, dof_um, distance_error, side_accuracy, float(scale),
                       float(offset))


def plot_calibration(calibration: Calibration, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    true_dof, estimate_dof = calibration.true_defocus_um / calibration.dof_um, calibration.estimates_um / calibration.dof_um
    axes.plot(true_dof, true_dof, color="grey", linewidth=1, label="perfect")
    axes.plot(true_dof, estimate_dof, "o-", label="network")
    axes.set(xlabel="true defocus (DOF), from the focus measure", ylabel="estimated defocus (DOF)",
             title=f"distance error {calibration.distance_error_dof:.2f} DOF, side {calibration.side_accuracy:.0%}")
    axes.legend()
    with writing(path):
        figure.savefig(path, dpi=120, bbox_inches="tight")


def result_summary(result: FocusResult) -> dict:
    """A focus result as plain values (frame metadata, JSON): why it stopped, the last
    estimate, the images taken and the z moved."""
    last = result.estimates[-1] if result.estimates else None
    estimate = last.defocus_um if last is not None and math.isfinite(last.defocus_um) else None
    return {"stop_reason": result.stop_reason, "converged": result.converged,
            "status": last.status if last is not None else None, "defocus_um": estimate,
            "images": result.images, "z_moved_um": result.moved_um, "at_limit": result.at_limit,
            "p_in_focus": result.p_in_focus if math.isfinite(result.p_in_focus) else None}


# --- the demo microscope as Python devices ----------------------------------------------------

class DemoSlide:
    """A tissue section through the demo optics whose focal plane is tilted and warped across the
    slide, so that positions differ in focus: `focus_z_um(x, y)`, by up to about 4.5 DOF within
    1.5 mm of the centre with the default tilt (DOF per mm) and warp (DOF); bare glass at
    `empty_xy`. Each position's tissue is drawn once, from its coordinates."""

    def __init__(self, magnification: float = 20, na: float = 0.7, size: int = 512,
                 tilt_dof_per_mm: tuple[float, float] = (1.4, -0.9), warp_dof: float = 1.0, focus_z_um: float = 0.0,
                 optics: Optics = Optics(), pixel_um: float | None = None, empty_xy=(), seed: int = 0):
        self.magnification, self.na, self.size, self.optics = magnification, na, size, optics
        self.dof_um = depth_of_field_um(magnification, na)
        self.pixel_um = pixel_um or CAMERA_PIXEL_UM / magnification
        self.tilt_dof_per_mm, self.warp_dof, self.z0_um = tilt_dof_per_mm, warp_dof, focus_z_um
        self.empty_xy, self.seed = [tuple(xy) for xy in empty_xy], seed
        self.fields: dict[tuple[int, int], VirtualMicroscope] = {}

    def focus_z_um(self, x_um: float, y_um: float) -> float:
        tilt = (self.tilt_dof_per_mm[0] * x_um + self.tilt_dof_per_mm[1] * y_um) / 1000
        warp = self.warp_dof * math.sin(2 * math.pi * x_um / 3000) * math.cos(2 * math.pi * y_um / 3000)
        return self.z0_um + (tilt + warp) * self.dof_um

    def image(self, x_um: float, y_um: float, z_um: float, bits: int, grey: bool) -> np.ndarray:
        """The camera frame with the stage at (x, y, z)."""
        key = (round(x_um), round(y_um))
        if key not in self.fields:
            empty = any(math.dist(key, xy) < 1 for xy in self.empty_xy)
            self.fields[key] = VirtualMicroscope(self.magnification, self.na, self.size, seed=hash((self.seed, key)) % 2**32,
                                                 optics=self.optics, empty=empty, pixel_um=self.pixel_um)
        field = self.fields[key]
        field.defocus_um = z_um - self.focus_z_um(x_um, y_um)
        return field.acquire(bits, grey)


class DemoZStage(StageDevice):
    """The focus drive: z in um, larger z further up (defocus grows with z above focus); every
    position it was sent to is in `visited`."""

    def __init__(self) -> None:
        super().__init__()
        self.z_um = 0.0
        self.visited: list[float] = []

    def set_position_um(self, val: float) -> None:
        self.z_um = float(val)
        self.visited.append(self.z_um)

    def get_position_um(self) -> float:
        return self.z_um

    def home(self) -> None:
        self.z_um = 0.0

    def stop(self) -> None:
        pass

    def set_origin(self) -> None:
        self.z_um = 0.0


class DemoXYStage(XYStageDevice):
    def __init__(self) -> None:
        super().__init__()
        self.xy_um = (0.0, 0.0)

    def set_position_um(self, x: float, y: float) -> None:
        self.xy_um = (float(x), float(y))

    def get_position_um(self) -> tuple[float, float]:
        return self.xy_um

    def set_origin_x(self) -> None:
        self.xy_um = (0.0, self.xy_um[1])

    def set_origin_y(self) -> None:
        self.xy_um = (self.xy_um[0], 0.0)

    def home(self) -> None:
        self.xy_um = (0.0, 0.0)

    def stop(self) -> None:
        pass


class DemoLamp(ShutterDevice):
    def __init__(self) -> None:
        super().__init__()
        self.is_open = False

    def get_open(self) -> bool:
        return self.is_open

    def set_open(self, open: bool) -> None:
        self.is_open = open


class DemoCamera(SimpleCameraDevice):
    """The demo slide seen through the camera: RGB or grey, 8 bits or 10-16 bits in 16-bit frames."""

    def __init__(self, slide: DemoSlide, xy: DemoXYStage, z: DemoZStage, bits: int = 8, grey: bool = False):
        self.slide, self.xy, self.z, self.bits, self.grey = slide, xy, z, bits, grey
        self.exposure_ms = 10.0
        super().__init__()

    def get_exposure(self) -> float:
        return self.exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self.exposure_ms = exposure

    def get_pixel_format(self) -> PixelFormat:
        return PixelFormat(f"{'Mono' if self.grey else 'RGB'}{self.bits}")

    def sensor_shape(self) -> tuple[int, ...]:
        return (self.slide.size, self.slide.size) if self.grey else (self.slide.size, self.slide.size, 3)

    def dtype(self):
        return np.uint8 if self.bits == 8 else np.uint16

    def snap(self, buffer: np.ndarray) -> dict:
        buffer[:] = self.slide.image(*self.xy.xy_um, self.z.z_um, self.bits, self.grey)
        return {}


@contextmanager
def no_installation_search_error():
    """pymmcore-plus looks for a Micro-Manager installation whenever a core is made and logs an
    error when it finds none; a core of Python devices needs none."""
    logger = logging.getLogger("pymmcore-plus")

    def keep(record: logging.LogRecord) -> bool:
        return "Could not find a compatible Micro-Manager installation" not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def python_device_core() -> UniMMCore:
    """A core for Python devices, made without the search for a Micro-Manager installation."""
    with no_installation_search_error():
        return UniMMCore()


def demo_core(slide: DemoSlide | None = None, bits: int = 8, grey: bool = False,
              pixel_size_um: float | None = None, z: DemoZStage | None = None) -> UniMMCore:
    """A pymmcore-plus core whose camera, lamp, Z and XY stages are the demo microscope's
    Python devices, with a pixel-size configuration (the slide's pixel size unless given)."""
    slide, z = slide or DemoSlide(), z or DemoZStage()
    core = python_device_core()
    xy = DemoXYStage()
    devices = {"Camera": DemoCamera(slide, xy, z, bits, grey), "Z": z, "XY": xy, "Lamp": DemoLamp()}
    for label, device in devices.items():
        core.loadPyDevice(label, device)
        core.initializeDevice(label)
    core.setCameraDevice("Camera")
    core.setFocusDevice("Z")
    core.setXYStageDevice("XY")
    core.setShutterDevice("Lamp")
    core.definePixelSizeConfig("demo")
    core.setPixelSizeUm("demo", pixel_size_um or slide.pixel_um)
    core.setPixelSizeConfig("demo")
    return core


# --- the command line -------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The autofocus on a Micro-Manager microscope: an autofocused "
                                                 "multi-position acquisition on the demo microscope (--demo), or "
                                                 "one autofocus on a microscope's configuration (--config).")
    parser.add_argument("--model", required=True, help="the fp32 ONNX file myTest.py wrote")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--demo", action="store_true", help="the demo microscope as Python devices")
    where.add_argument("--config", default=None,
                       help="a Micro-Manager configuration file (needs Micro-Manager's device adapters: "
                            "'mmcore install')")
    parser.add_argument("--magnification", type=positive(float), default=20,
                        help="the objective (the demo's; a MOAF model's) (default: %(default)s)")
    parser.add_argument("--na", type=positive(float), default=0.7, help="(default: %(default)s)")
    parser.add_argument("--tolerance_dof", type=positive(float), default=0.5,
                        help="stop within this many depths of field of focus (default: %(default)s)")
    parser.add_argument("--max_images", type=positive(int), default=5, help="per autofocus (default: %(default)s)")
    parser.add_argument("--confidence", type=probability, default=CONFIDENCE,
                        help="stop when in focus within the tolerance with this probability, by the network's "
                             "measured error (default: %(default)s)")
    parser.add_argument("--z_range_um", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="the focus device never leaves this range (default: the demo's +-20 DOF; none)")
    parser.add_argument("--positions", type=positive(int), default=6, help="--demo positions (default: %(default)s)")
    parser.add_argument("--time_points", type=positive(int), default=2,
                        help="--demo time points (default: %(default)s)")
    parser.add_argument("--drift_dof", type=positive(float, allow_zero=True), default=0.0,
                        help="--demo: between time points the slide's focus drifts by up to this many DOF, "
                             "drawn uniformly (default: %(default)s)")
    parser.add_argument("--frame_size", type=positive(int), default=512,
                        help="--demo camera frame size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="--demo slide (default: %(default)s)")
    parser.add_argument("--calibrate", type=positive(float), default=None, metavar="SPAN_UM",
                        help="instead of focusing: a z-sweep this many um wide, centred where the stage is (--demo: "
                             "near focus at the slide's centre), the network's estimates against the focus it shows")
    parser.add_argument("--steps", type=positive(int), default=21, help="--calibrate slices (default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=Path("calibration.png"),
                        help="--calibrate: estimate against true defocus (default: %(default)s)")
    parser.add_argument("--save_calibration", action="store_true",
                        help="--calibrate: save the offset beside the model, where FocusPredictor applies it")
    return parser


def is_moaf(model_path) -> bool:
    from exported_model import open_session

    return "params" in {node.name for node in open_session(model_path).get_inputs()}


def build_predictor(args) -> FocusPredictor:
    moaf = is_moaf(args.model)
    return FocusPredictor(args.model, args.magnification if moaf else None, args.na if moaf else None)


def run_demo(args, predictor: FocusPredictor) -> None:
    """A multi-position, multi-time-point acquisition on the demo microscope, autofocused at
    every position and time point; per position and time point: defocus before, images, after."""
    dof_um = depth_of_field_um(args.magnification, args.na)
    slide, z_stage = DemoSlide(args.magnification, args.na, args.frame_size, seed=args.seed), DemoZStage()
    core = demo_core(slide, z=z_stage)
    rng = np.random.default_rng(args.seed)
    positions = [useq.Position(x=x, y=y, z=0.0) for x, y in rng.uniform(-1500, 1500, size=(args.positions, 2))]
    z_range = tuple(args.z_range_um) if args.z_range_um else (-20 * dof_um, 20 * dof_um)
    engine = AutofocusEngine(core, predictor, args.tolerance_dof * dof_um, args.max_images, z_range_um=z_range,
                             confidence=args.confidence)
    core.mda.set_engine(engine)
    frames = []

    @core.mda.events.frameReady.connect
    def record(image, event, metadata):
        x, y = core.getXYPosition()
        frames.append((event.index.get("t", 0), event.index.get("p"), (core.getZPosition() - slide.focus_z_um(x, y))
                       / dof_um, metadata.get("autofocus", {})))

    drifts_dof = np.random.default_rng(args.seed + 1).uniform(-1, 1, args.time_points) * args.drift_dof
    drifts_dof[0] = 0.0
    time_point = {"t": 0}

    @core.mda.events.eventStarted.connect
    def drift(event):
        t = event.index.get("t", 0)
        if t != time_point["t"]:  # a new time point: the whole slide's focus has drifted
            time_point["t"] = t
            slide.z0_um += drifts_dof[t] * dof_um

    sequence = useq.MDASequence(stage_positions=positions, time_plan={"interval": 0, "loops": args.time_points},
                                autofocus_plan=useq.AxesBasedAF(axes=("p",)))
    core.mda.run(sequence)
    print(f"{args.positions} positions x {args.time_points} time points at {args.magnification:g}x/{args.na:g} "
          f"(DOF {dof_um:.2f} um), tolerance {args.tolerance_dof} DOF, drift between time points up to "
          f"{args.drift_dof} DOF")
    for t, p, end_dof, summary in frames:
        start_dof = end_dof - summary.get("z_moved_um", 0.0) / dof_um
        print(f"t {t} position {p}: start {start_dof:+.2f} DOF, {summary.get('images')} image(s), "
              f"{summary.get('stop_reason')}, frame at {end_dof:+.2f} DOF")
    within = sum(abs(end) <= 1 for _, _, end, _ in frames)
    print(f"frames within 1 DOF of focus: {within}/{len(frames)}")
    for t in range(args.time_points):
        images = [summary.get("images", 0) for time, _, _, summary in frames if time == t]
        print(f"time point {t}: {np.mean(images):.2f} images per autofocus" +
              (f" (focus drifted {drifts_dof[t]:+.2f} DOF)" if t else ""))
    print(f"the focus stage stayed within {min(z_stage.visited):.2f}..{max(z_stage.visited):.2f} um "
          f"(z_range_um {z_range[0]:.2f}..{z_range[1]:.2f})")
    print_integration_cost(core, predictor, args.tolerance_dof * dof_um, args.max_images)


def print_integration_cost(core: CMMCorePlus, predictor: FocusPredictor, tolerance_um: float, max_images: int,
                           repeats: int = 10) -> None:
    """What `autofocus` costs beyond its snaps (snapImage, getImage) and predictions, per call,
    measured on `repeats` calls where the stage is."""
    spent = {"snap": 0.0, "predict": 0.0}
    core.snapImage, core.getImage = timed(core.snapImage, spent, "snap"), timed(core.getImage, spent, "snap")
    predictor.predict = timed(predictor.predict, spent, "predict")
    start = time.perf_counter()
    for _ in range(repeats):
        autofocus(core, predictor, tolerance_um, max_images)
    total = (time.perf_counter() - start) / repeats
    snap, predict = spent["snap"] / repeats, spent["predict"] / repeats
    del core.snapImage, core.getImage, predictor.predict
    print(f"per autofocus ({repeats} calls): {1000 * total:.1f} ms, of which snaps {1000 * snap:.1f} ms, "
          f"predictions {1000 * predict:.1f} ms, the integration itself {1000 * (total - snap - predict):.2f} ms")


def run_calibration(args, core: CMMCorePlus, predictor: FocusPredictor) -> None:
    z_range = tuple(args.z_range_um) if args.z_range_um else None
    calibration = calibrate(core, predictor, args.calibrate, args.steps, z_range_um=z_range, plot_path=args.plot,
                            save=args.save_calibration)
    print(calibration.report())
    print(f"plot: {args.plot}" + (f"; offset saved in {calibration_file(args.model)}" if args.save_calibration else ""))


def configured_core(config: str) -> CMMCorePlus:
    """A core with a Micro-Manager configuration file loaded."""
    with no_installation_search_error():
        core = CMMCorePlus()
    try:
        core.loadSystemConfiguration(config)
    except (RuntimeError, OSError) as error:
        raise MicroscopeError(f"cannot load {config}: {error}") from None
    return core


def focus_once(args, core: CMMCorePlus, predictor: FocusPredictor) -> None:
    """Focus once where the stage is."""
    tolerance_um = args.tolerance_dof * depth_of_field_um(args.magnification, args.na)
    z_range = tuple(args.z_range_um) if args.z_range_um else None
    start = core.getZPosition()
    result = autofocus(core, predictor, tolerance_um, args.max_images, z_range_um=z_range, confidence=args.confidence)
    print(f"z {start:.2f} -> {core.getZPosition():.2f} um: {result_summary(result)}")


def main(args) -> None:
    predictor = build_predictor(args)
    if args.demo and args.calibrate:
        slide = DemoSlide(args.magnification, args.na, args.frame_size, seed=args.seed)
        core = demo_core(slide)
        core.setZPosition(slide.focus_z_um(0, 0) + 0.3 * slide.dof_um)
        run_calibration(args, core, predictor)
    elif args.demo:
        run_demo(args, predictor)
    else:
        core = configured_core(args.config)
        (run_calibration if args.calibrate else focus_once)(args, core, predictor)


if __name__ == "__main__":
    run(main, get_args_parser().parse_args())
