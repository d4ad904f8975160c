"""The network as the autofocus of a Micro-Manager microscope (pymmcore-plus): focus once where
the stage is (`autofocus`), or at every position of an acquisition (`AutofocusEngine`).
micromanager.py is its command line; calibration.py compares the network with a z-sweep;
demo_microscope.py is a microscope of Python devices.

    from autofocuskit import FocusPredictor
    from autofocuskit.microscope import AutofocusEngine
    core.mda.set_engine(AutofocusEngine(core, FocusPredictor("model.onnx"), tolerance_um=1.0,
                                        z_range_um=(1000, 1400)))
    core.mda.run(useq.MDASequence(stage_positions=[...], time_plan=...,
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))

The core's camera, focus device and pixel size (its pixel-size configuration) are used as they
are set; the frames are resampled to the pixel size the network was trained at, and scaled
by the camera's bit depth.
"""
import math
import re

import numpy as np
import useq
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.mda import MDAEngine

from .cli import UserError
from .loop import FocusResult, FocusSettings, focus_loop
from .predictor import FocusPredictor
from .pymmcore_private import set_event_z, z_correction


class MicroscopeError(UserError):
    """A core the autofocus cannot work with; nothing was moved."""


def autofocus(core: CMMCorePlus, predictor: FocusPredictor, settings: FocusSettings | None = None, *,
              prior_sd_um: float | None = None, field_log_prior: np.ndarray | None = None,
              **setting_changes) -> FocusResult:
    """Focus where the stage is, with the core's camera and focus device: focus_loop on
    snapImage/getImage and relative moves of the focus device, never outside `z_range_um`
    (absolute, in the focus device's units). The settings are focus_loop's (a FocusSettings or
    its fields as keyword arguments), as are `prior_sd_um` and `field_log_prior`. Frames get the
    core's pixel size (when it has a pixel-size configuration, else the predictor's own) and
    the camera's bit depth. A camera or stage error propagates with no further move."""
    settings = FocusSettings.of(settings, **setting_changes)
    focus_device = check_core(core)
    use_camera_settings(core, predictor)

    def acquire() -> np.ndarray:
        core.snapImage()
        return core.getImage()

    def move_by(delta_um: float) -> None:
        core.setRelativePosition(focus_device, delta_um)
        core.waitForDevice(focus_device)

    return focus_loop(acquire, move_by, predictor, settings, z_um=lambda: core.getPosition(focus_device),
                      prior_sd_um=prior_sd_um, field_log_prior=field_log_prior)


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

    def __init__(self, core: CMMCorePlus, predictor: FocusPredictor, settings: FocusSettings | None = None, *,
                 drift_um: float | None = None, tolerance_um: float | None = None, max_images: int | None = None,
                 max_step_um: float | None = None, confidence: float | None = None,
                 z_range_um: tuple[float, float] | None = None, **options):
        super().__init__(core, **options)
        self.settings = FocusSettings.of(settings, tolerance_um=tolerance_um, max_images=max_images,
                                         max_step_um=max_step_um, confidence=confidence, z_range_um=z_range_um)
        self.predictor = predictor
        self.drift_um = drift_um if drift_um is not None else self.settings.tolerance_um
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
        result = autofocus(core, self.predictor, self.settings, prior_sd_um=self.drift_um if focused_before else None,
                           field_log_prior=before.field_log_posterior if before is not None else None)
        correction = z_correction(self)
        correction[position] = correction.get(position, 0.0) + core.getZPosition() - start
        self.results[position] = result
        return result

    def _set_event_z(self, event: useq.MDAEvent) -> None:
        """The engine's own z moves (each event's z plus its position's correction) kept in
        `z_range_um` as the autofocus's are: one outside stops the acquisition before it moves."""
        if self.settings.z_range_um is not None:
            z_um = event.z_pos + z_correction(self).get(event.index.get("p"), 0.0)
            low, high = self.settings.z_range_um
            if not low <= z_um <= high:
                raise MicroscopeError(f"event {dict(event.index)} asks for z = {z_um:.2f}, outside z_range_um "
                                      f"({low:g}, {high:g}): the acquisition stops there, the stage not moved")
        set_event_z(self, event)

    def get_frame_metadata(self, event: useq.MDAEvent, *args, **kwargs):
        metadata = super().get_frame_metadata(event, *args, **kwargs)
        result = self.results.get(event.index.get("p"))
        if result is not None:
            metadata["autofocus"] = result_summary(result)
        return metadata


def result_summary(result: FocusResult) -> dict:
    """A focus result as plain values (frame metadata, JSON): why it stopped, the last
    estimate, the images taken and the z moved."""
    last = result.estimates[-1] if result.estimates else None
    estimate = last.defocus_um if last is not None and math.isfinite(last.defocus_um) else None
    return {"stop_reason": result.stop_reason, "converged": result.converged,
            "status": last.status if last is not None else None, "defocus_um": estimate,
            "images": result.images, "z_moved_um": result.moved_um, "at_limit": result.at_limit,
            "p_in_focus": result.p_in_focus if math.isfinite(result.p_in_focus) else None}


def configured_core(config: str) -> CMMCorePlus:
    """A core with a Micro-Manager configuration file loaded."""
    from .demo_microscope import no_installation_search_error

    with no_installation_search_error():
        core = CMMCorePlus()
    try:
        core.loadSystemConfiguration(config)
    except (RuntimeError, OSError) as error:
        raise MicroscopeError(f"cannot load {config}: {error}") from None
    return core
