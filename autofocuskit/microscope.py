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
import logging
import math
import re
from contextlib import contextmanager

import numpy as np
import useq
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.mda import MDAEngine, SkipEvent

from .cli import UserError
from .loop import FocusResult, FocusSettings, focus_loop
from .predictor import FocusPredictor
from .pymmcore_private import z_correction

logger = logging.getLogger("autofocuskit")


class MicroscopeError(UserError):
    """A core the autofocus cannot work with; nothing was moved."""


def autofocus(core: CMMCorePlus, predictor: FocusPredictor, settings: FocusSettings | None = None, *,
              prior_sd_um: float | None = None, field_log_prior: np.ndarray | None = None,
              sharpness_before=(), **setting_changes) -> FocusResult:
    """Focus where the stage is, with the core's camera and focus device: focus_loop on
    snapImage/getImage and relative moves of the focus device, never outside `z_range_um`
    (absolute, in the focus device's units). The settings are focus_loop's (a FocusSettings or
    its fields as keyword arguments), as are `prior_sd_um`, `field_log_prior` and
    `sharpness_before`. Frames get the
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
                      prior_sd_um=prior_sd_um, field_log_prior=field_log_prior, sharpness_before=sharpness_before)


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


FAILURE_POLICIES = {
    "keep": "warn and take the frames: where the loop left the stage, or after an error at the last good z",
    "skip": "warn and skip the field's frames at this time point; the stage back at the last good z",
    "raise": "end the acquisition",
}
# an AxesBasedAF's autofocus_device_name that asks for the network by name; a name that is no
# device of the core asks for it too, as does no name
NETWORK_AUTOFOCUS = "autofocuskit"


class AutofocusFailed(MicroscopeError):
    """An autofocus that failed under on_failure="raise", or an event outside z_range_um."""


def index_of(event: useq.MDAEvent) -> dict:
    """An event's index; a hardware sequence's is its first event's (its own is empty)."""
    events = getattr(event, "events", None)
    return events[0].index if events else event.index


def event_name(event: useq.MDAEvent) -> str:
    """An event as a person reads it: its index, 't=1 p=0 z=2'."""
    return " ".join(f"{getattr(axis, 'value', axis)}={index}" for axis, index in index_of(event).items())


def network_answers(core: CMMCorePlus, device_name: str | None) -> bool:
    """Whether an autofocus naming `device_name` is the network's: no name, NETWORK_AUTOFOCUS,
    or a name that is no device of the core (a device's is pymmcore-plus's to handle)."""
    return device_name is None or device_name == NETWORK_AUTOFOCUS or device_name not in core.getLoadedDevices()


def field_of(event: useq.MDAEvent) -> tuple:
    """The field an event images: its position and grid tile."""
    index = index_of(event)
    return index.get("p"), index.get("g")


class AutofocusEngine(MDAEngine):
    """pymmcore-plus's acquisition engine with the network as its autofocus.

    Every `useq.HardwareAutofocus` event (a sequence's `autofocus_plan`) whose
    `autofocus_device_name` names no device of the core runs `autofocus`; one that names a
    device (a hardware focus lock) goes to pymmcore-plus's own handling, so that both share
    a plan. The z a network autofocus moved is kept as its field's correction (per position
    and grid tile) and added to the later events there, z-stacks and hardware-sequenced
    z-stacks included; the next autofocus there starts from it, expecting focus within
    `drift_um` (default: the tolerance) and knowing how its field reads.

    - `z_range_um`: no z the acquisition reaches leaves it. An event that would is skipped
      before anything moves, with a warning (`on_failure="raise"`: the acquisition ends).
    - `on_failure` (FAILURE_POLICIES): what a failed autofocus does: an error that remains
      after the event's `max_retries` tries (a camera that times out), a loop that ended
      unconverged, or a correction larger than `max_correction_um` (default: the network's
      trained range) from the field's last good z. Nothing unconfirmed carries into later
      time points.
    - `focus_preset=(group, preset)`, `focus_exposure_ms`: the configuration and exposure of
      the autofocus frames (a bright-field channel in a fluorescence plan), restored after.
    Each frame's metadata holds its field's autofocus under "autofocus", with "outcome"
    (focused, unconverged, failed, skipped) and "focused" (it follows a successful autofocus).
    """

    def __init__(self, core: CMMCorePlus, predictor: FocusPredictor, settings: FocusSettings | None = None, *,
                 drift_um: float | None = None, on_failure: str = "keep", max_correction_um: float | None = None,
                 focus_preset: tuple[str, str] | None = None, focus_exposure_ms: float | None = None,
                 tolerance_um: float | None = None, max_images: int | None = None, max_step_um: float | None = None,
                 confidence: float | None = None, z_range_um: tuple[float, float] | None = None, **options):
        super().__init__(core, **options)
        self.settings = FocusSettings.of(settings, tolerance_um=tolerance_um, max_images=max_images,
                                         max_step_um=max_step_um, confidence=confidence, z_range_um=z_range_um)
        if on_failure not in FAILURE_POLICIES:
            raise MicroscopeError(f"on_failure must be one of {sorted(FAILURE_POLICIES)}, got {on_failure!r}")
        check_preset(core, focus_preset)
        self.predictor, self.on_failure, self.focus_preset = predictor, on_failure, focus_preset
        self.focus_exposure_ms = focus_exposure_ms
        self.drift_um = drift_um if drift_um is not None else self.settings.tolerance_um
        self.max_correction_um = max_correction_um or predictor.error_model.saturation
        self.fields = FieldMemory()

    def setup_sequence(self, sequence: useq.MDASequence):
        check_plan(self.mmcore, sequence)
        self.fields = FieldMemory()
        return super().setup_sequence(sequence)

    def setup_event(self, event: useq.MDAEvent) -> None:
        field = field_of(event)
        if self.is_network_autofocus(event):
            self.fields.correction[field] = self.fields.confirmed.get(field, 0.0)
        if (field, index_of(event).get("t")) in self.fields.skipped:
            raise SkipEvent(frame_count(event), f"the autofocus of {event_name(event)}'s field failed")
        super().setup_event(self.corrected(event))

    def corrected(self, event: useq.MDAEvent) -> useq.MDAEvent:
        """The event with its field's correction added to its z (and to each z of a hardware
        sequence, which pymmcore-plus does not correct); SkipEvent (or AutofocusFailed under
        on_failure="raise") before anything moves where a z would leave z_range_um."""
        mine = self.fields.correction.get(field_of(event), 0.0)
        theirs = z_correction(self).get(field_of(event)[0], 0.0)  # a hardware autofocus's, added by MDAEngine
        z_sequence = getattr(event, "z_sequence", None)
        changes = {"z_sequence": tuple(z + mine + theirs for z in z_sequence)} if z_sequence else {}
        if event.z_pos is not None:
            changes["z_pos"] = event.z_pos + mine
        single = [changes["z_pos"] + theirs] if "z_pos" in changes else []
        self.check_in_range(event, [*changes.get("z_sequence", ()), *single])
        return event.model_copy(update=changes) if changes else event

    def check_in_range(self, event: useq.MDAEvent, z_values: list[float]) -> None:
        if self.settings.z_range_um is None or not z_values:
            return
        low, high = self.settings.z_range_um
        outside = [z for z in z_values if not low <= z <= high]
        if outside:
            message = (f"event {event_name(event)} asks for z = {outside[0]:.2f} (with its field's correction), "
                       f"outside z_range_um ({low:g}, {high:g}); nothing moved")
            if self.on_failure == "raise":
                raise AutofocusFailed(message + ": the acquisition stops")
            logger.warning("%s: skipped", message)
            raise SkipEvent(frame_count(event), message)

    def is_network_autofocus(self, event: useq.MDAEvent) -> bool:
        return (isinstance(event.action, useq.HardwareAutofocus)
                and network_answers(self.mmcore, event.action.autofocus_device_name))

    def exec_event(self, event: useq.MDAEvent):
        if self.is_network_autofocus(event):
            self.focus_field(event)
            return ()
        return super().exec_event(event)

    def focus_field(self, event: useq.MDAEvent) -> None:
        """The network's autofocus at the event's field, with retries on errors and the failure policy."""
        core, field = self.mmcore, field_of(event)
        start = core.getPosition(core.getFocusDevice())
        result, error = self.autofocus_with_retries(field, start, event.action.max_retries)
        moved = core.getPosition(core.getFocusDevice()) - start
        problem = failure_of(result, error, moved, self.max_correction_um)
        if problem is None:
            self.fields.confirmed[field] = self.fields.correction[field] = self.fields.correction[field] + moved
            self.fields.log_priors[field] = result.field_log_posterior
            self.fields.sharpness[field] = result.sharpness_seen
            self.fields.summaries[field] = {**result_summary(result), "outcome": "focused", "focused": True}
            return
        self.fields.summaries[field] = {**(result_summary(result) if result else {}), "focused": False,
                                        "outcome": "skipped" if self.on_failure == "skip" else
                                        ("unconverged" if error is None else "failed"), "problem": problem}
        message = f"autofocus at {event_name(event)}: {problem}"
        if self.on_failure == "raise":
            raise AutofocusFailed(message + ": the acquisition stops") from error
        if self.on_failure == "keep" and error is None and abs(moved) <= self.max_correction_um:
            self.fields.correction[field] += moved  # this time point's frames where the loop ended; not confirmed
            logger.warning("%s; the frames are taken where the loop ended", message)
            return
        core.setPosition(core.getFocusDevice(), start)
        core.waitForDevice(core.getFocusDevice())
        if self.on_failure == "skip":
            self.fields.skipped.add((field, index_of(event).get("t")))
        logger.warning("%s; %s", message, "its frames at this time point are skipped" if self.on_failure == "skip"
                       else "the frames are taken at its last good z")

    def autofocus_with_retries(self, field, start: float, tries: int):
        """(result, None), or (None, the last error) after `tries` tries, the stage back at `start` after each."""
        error = None
        for _ in range(max(1, tries)):
            try:
                with focus_channel(self.mmcore, self.focus_preset, self.focus_exposure_ms):
                    focused_before = field in self.fields.confirmed
                    return autofocus(self.mmcore, self.predictor, self.settings,
                                     prior_sd_um=self.drift_um if focused_before else None,
                                     field_log_prior=self.fields.log_priors.get(field),
                                     sharpness_before=self.fields.sharpness.get(field, ())), None
            except Exception as caught:  # a camera or stage error of any device adapter: the policy decides
                error = caught
                self.mmcore.setPosition(self.mmcore.getFocusDevice(), start)
        return None, error

    def get_frame_metadata(self, event: useq.MDAEvent, *args, **kwargs):
        metadata = super().get_frame_metadata(event, *args, **kwargs)
        summary = self.fields.summaries.get(field_of(event))
        if summary is not None:
            metadata["autofocus"] = summary
        return metadata


class FieldMemory:
    """What an acquisition's autofocus knows of each field (position, grid tile)."""

    def __init__(self):
        self.confirmed: dict = {}  # the correction the last successful autofocus found
        self.correction: dict = {}  # the correction the field's events get now
        self.log_priors: dict = {}  # what the last successful loop learnt of the field's offset
        self.sharpness: dict = {}  # and the sharpness of its frames
        self.summaries: dict = {}  # the last autofocus, as frame metadata
        self.skipped: set = set()  # (field, time point) whose frames are skipped


def failure_of(result: FocusResult | None, error: Exception | None, moved_um: float,
               max_correction_um: float) -> str | None:
    """Why an autofocus counts as failed, or None."""
    if error is not None:
        return f"{type(error).__name__}: {error}"
    if not result.converged:
        return f"the loop ended unconverged ({result.stop_reason}, p in focus {result.p_in_focus:.2f})"
    if abs(moved_um) > max_correction_um:
        return f"a correction of {moved_um:+.2f} um, more than max_correction_um {max_correction_um:g}"
    return None


def frame_count(event: useq.MDAEvent) -> int:
    """The frames an event would have given: a sequence's count, none for an autofocus."""
    if isinstance(event.action, useq.HardwareAutofocus):
        return 0
    return len(getattr(event, "events", None) or (event,))


def check_preset(core: CMMCorePlus, preset: tuple[str, str] | None, what: str = "focus_preset") -> None:
    """MicroscopeError naming `what` unless the core has the (group, name) preset."""
    if preset is None:
        return
    group, name = preset
    if group not in core.getAvailableConfigGroups() or name not in core.getAvailableConfigs(group):
        raise MicroscopeError(f"{what} {group} {name}: the core has no preset {name!r} in group {group!r} "
                              f"(groups: {list(core.getAvailableConfigGroups())})")


def check_plan(core: CMMCorePlus, sequence: useq.MDASequence) -> None:
    """MicroscopeError for an autofocus plan the network cannot follow: a motor offset is a
    hardware focus lock's setting."""
    plans = [sequence.autofocus_plan] + [position.sequence.autofocus_plan for position in sequence.stage_positions
                                         if position.sequence is not None]
    for plan in filter(None, plans):
        if network_answers(core, plan.autofocus_device_name) and plan.autofocus_motor_offset is not None:
            raise MicroscopeError(f"autofocus_motor_offset={plan.autofocus_motor_offset} in an autofocus plan the "
                                  f"network answers (autofocus_device_name={plan.autofocus_device_name!r}): the offset is a hardware focus "
                                  "lock's setting; name its device, or leave the offset out")


@contextmanager
def focus_channel(core: CMMCorePlus, preset: tuple[str, str] | None, exposure_ms: float | None):
    """The autofocus frames in `preset` (group, name) and at `exposure_ms`; what was set before, after."""
    before_preset = core.getCurrentConfig(preset[0]) if preset else None
    before_exposure = core.getExposure()
    try:
        if preset:
            core.setConfig(*preset)
        if exposure_ms is not None:
            core.setExposure(exposure_ms)
        core.waitForSystem()
        yield
    finally:
        if preset and before_preset:
            core.setConfig(preset[0], before_preset)
        core.setExposure(before_exposure)


def result_summary(result: FocusResult) -> dict:
    """A focus result as plain values (frame metadata, JSON): why it stopped, the last
    estimate, the images taken and the z moved."""
    last = result.estimates[-1] if result.estimates else None
    estimate = last.defocus_um if last is not None and math.isfinite(last.defocus_um) else None
    return {"stop_reason": result.stop_reason, "converged": result.converged,
            "status": last.status if last is not None else None, "defocus_um": estimate,
            "images": result.images, "z_moved_um": result.moved_um, "at_limit": result.at_limit,
            "p_in_focus": result.p_in_focus if math.isfinite(result.p_in_focus) else None}


def configured_core(config: str, presets=()) -> CMMCorePlus:
    """A core with a Micro-Manager configuration file loaded (a name alone, like
    MMConfig_demo.cfg, is looked for among the installed device adapters too), and each
    (group, preset) of `presets` set."""
    from .demo_microscope import no_installation_search_error

    with no_installation_search_error():
        core = CMMCorePlus()
    try:
        core.loadSystemConfiguration(config)
    except (RuntimeError, OSError, FileNotFoundError) as error:
        raise MicroscopeError(f"cannot load {config}: {error}") from None
    try:
        for group, preset in presets:
            check_preset(core, (group, preset), "--preset")
            core.setConfig(group, preset)
        core.waitForSystem()
    except MicroscopeError:
        core.unloadAllDevices()  # device adapters left loaded at exit can abort the interpreter
        raise
    return core
