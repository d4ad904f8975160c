"""microscope.py on the real pymmcore-plus core and acquisition engine, with the demo microscope
as Python devices and with Micro-Manager's own demo device adapters (MMConfig_demo.cfg): bad cores
refused without a move, the stage range kept for every z (hardware sequences included), blank fields
left alone, the camera's bit depth and pixel size used, autofocused acquisitions, the failure
policies, a hardware focus lock beside the network, a focus channel, memory per grid tile."""
import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import useq

from autofocuskit.demo_microscope import DemoCamera, DemoSlide, DemoXYStage, DemoZStage, demo_core, python_device_core
from autofocuskit.error_model import ErrorModel
from autofocuskit.microscope import (AutofocusEngine, AutofocusFailed, MicroscopeError, autofocus, camera_bit_depth,
                                     configured_core)
from autofocuskit.predictor import FocusError, FocusEstimate, FocusPredictor
from autofocuskit.schema import depth_of_field_um
from conftest import slide_10x

DOF_10X = depth_of_field_um(10, 0.3)
# a network as good as its error model says: it reads 0.3 um at focus, 0.3 um spread
SHARP = ErrorModel(floor=0.3, gain=1.0, sigma0=0.3, sigma_slope=0.02, saturation=50.0, side_max=0.95,
                   side_reach=1.0, validation_images=1000, field_spread=0.1)


def test_a_core_without_camera_or_focus_device_is_refused(model_10x):
    core = python_device_core()
    with pytest.raises(MicroscopeError, match="no camera"):
        autofocus(core, FocusPredictor(model_10x), tolerance_um=1.0)
    xy, z = DemoXYStage(), DemoZStage()
    core.loadPyDevice("Camera", DemoCamera(slide_10x(), xy, z))
    core.initializeDevice("Camera")
    core.setCameraDevice("Camera")
    with pytest.raises(MicroscopeError, match="no focus device"):
        autofocus(core, FocusPredictor(model_10x), tolerance_um=1.0)


def test_limits_that_do_not_hold_the_stage_move_nothing(model_10x):
    core = demo_core(slide_10x())
    core.setZPosition(3.0)
    with pytest.raises(FocusError, match="outside z_range_um"):
        autofocus(core, FocusPredictor(model_10x), tolerance_um=1.0, z_range_um=(5.0, 50.0))
    assert core.getZPosition() == 3.0


class FarPredictor(FocusPredictor):
    """Says the stage is far above focus, which lies 200 um below z = 0, out of the range."""

    def __init__(self, model, stage):
        super().__init__(model)
        self.stage = stage

    def predict(self, frame):
        distance = self.stage.z_um + 200.0
        return FocusEstimate(distance, "out_of_range", distance, None, 0.0, 16, 16)


def test_a_predictor_that_always_says_far_stops_at_the_range_and_never_leaves_it(model_10x):
    z = DemoZStage()
    core = demo_core(slide_10x(), z=z)
    result = autofocus(core, FarPredictor(model_10x, z), tolerance_um=1.0, max_images=6, max_step_um=20.0,
                       z_range_um=(-45.0, 45.0))
    assert result.stop_reason == "at_limit" and result.at_limit and not result.converged
    assert z.visited and min(z.visited) == -45.0 and core.getZPosition() == -45.0 and result.images == 4


def test_a_blank_field_moves_nothing(model_10x):
    core = demo_core(slide_10x(empty_xy=[(0, 0)]))
    core.setZPosition(12.0)
    result = autofocus(core, FocusPredictor(model_10x), tolerance_um=1.0)
    assert result.stop_reason == "no_sample" and result.moves_um == [] and core.getZPosition() == 12.0


def test_a_12_bit_camera_is_scaled_by_its_bit_depth(model_10x):
    """The same field on an 8-bit and a 12-bit grey camera (16-bit frames): the network sees the same tiles."""
    tiles = {}
    for bits in (8, 12):
        core = demo_core(slide_10x(seed=3), bits=bits, grey=True)
        core.setZPosition(5.0)
        assert camera_bit_depth(core) == bits
        predictor = FocusPredictor(model_10x)
        result = autofocus(core, predictor, tolerance_um=1.0, max_images=1)
        assert predictor.bit_depth == bits and result.estimates[0].status != "no_sample"
        core.snapImage()
        tiles[bits] = predictor.tiles(core.getImage())[0].astype(float)
    assert np.abs(tiles[12] - tiles[8]).mean() < 1.0


def test_the_cores_pixel_size_reaches_the_predictor(model_10x):
    """A camera with 0.52 um pixels behind the 10x objective: frames shrink to the trained 0.65 um."""
    core = demo_core(slide_10x(pixel_um=0.52, size=512))
    predictor = FocusPredictor(model_10x)
    autofocus(core, predictor, tolerance_um=1.0, max_images=1)
    assert predictor.pixel_size_um == pytest.approx(0.52) and predictor.scale == pytest.approx(0.8)
    core.setPixelSizeUm("demo", 2.0)
    with pytest.raises(FocusError, match="coarser"):
        autofocus(core, predictor, tolerance_um=1.0)


def positions_apart_in_focus(slide: DemoSlide, count: int) -> list[useq.Position]:
    """Positions on a line through the slide whose focus lies 3 DOF apart end to end."""
    return [useq.Position(x=x, y=0.0, z=0.0) for x in np.linspace(-1200, 1200, count)]


class TruthfulPredictor(FocusPredictor):
    """Reads the demo slide's true defocus where the core's stages stand as its error model says
    it would, with the side right."""

    def __init__(self, model, slide, core):
        super().__init__(model)
        self.slide, self.core = slide, core
        self.error_model = replace(self.error_model, floor=0.05 * DOF_10X, field_spread=0.02 * DOF_10X,
                                   validation_images=1000)

    def predict(self, frame):
        defocus = self.core.getZPosition() - self.slide.focus_z_um(*self.core.getXYPosition())
        distance = float(self.error_model.mean_distance(np.array(abs(defocus))))
        return FocusEstimate(math.copysign(distance, defocus), "ok", distance, None, 0.0, 16, 16, "", 0.05 * DOF_10X)


def test_the_engine_keeps_each_positions_correction_for_its_later_events(model_10x):
    """With a network that is always right: one move at each position out of focus (the middle one
    starts in focus), then every later autofocus finds its position in focus with one image;
    frames carry the results."""
    slide = slide_10x()
    core = demo_core(slide)
    engine = AutofocusEngine(core, TruthfulPredictor(model_10x, slide, core), tolerance_um=0.25 * DOF_10X)
    core.mda.set_engine(engine)
    frames = []

    @core.mda.events.frameReady.connect
    def record(image, event, metadata):
        frames.append((event.index["t"], core.getZPosition() - slide.focus_z_um(*core.getXYPosition()),
                       metadata["autofocus"]))

    core.mda.run(useq.MDASequence(stage_positions=positions_apart_in_focus(slide, 3), time_plan={"interval": 0,
                                  "loops": 2}, autofocus_plan=useq.AxesBasedAF(axes=("p",))))
    assert len(frames) == 6 and all(abs(defocus) <= 0.25 * DOF_10X for _, defocus, _ in frames)
    assert [summary["images"] for _, _, summary in frames] == [2, 1, 2, 1, 1, 1]
    assert all(summary["stop_reason"] == "within_tolerance" for _, _, summary in frames)
    assert [abs(summary["z_moved_um"]) < 0.25 * DOF_10X for _, _, summary in frames] == [False, True, False, True,
                                                                                           True, True]


def test_an_event_outside_the_range_is_skipped_before_anything_moves_and_the_rest_is_taken(model_10x, caplog):
    """A position whose z lies beyond z_range_um is skipped with a warning naming it; the other
    position's frame is taken; on_failure="raise" ends the acquisition there instead."""
    z = DemoZStage()
    core = demo_core(slide_10x(), z=z)
    core.mda.set_engine(AutofocusEngine(core, FocusPredictor(model_10x), tolerance_um=1.0, z_range_um=(-50.0, 50.0)))
    frames = []
    core.mda.events.frameReady.connect(lambda image, event, metadata: frames.append(event.index["p"]))
    positions = [useq.Position(x=0.0, y=0.0, z=80.0), useq.Position(x=10.0, y=0.0, z=0.0)]
    with caplog.at_level(logging.WARNING, "autofocuskit"):
        core.mda.run(useq.MDASequence(stage_positions=positions))
    assert frames == [1] and "p=0 asks for z = 80.00" in caplog.text and "outside z_range_um (-50, 50)" in caplog.text
    core.mda.set_engine(AutofocusEngine(core, FocusPredictor(model_10x), tolerance_um=1.0, z_range_um=(-50.0, 50.0),
                                        on_failure="raise"))
    with pytest.raises(AutofocusFailed, match="outside z_range_um"):
        core.mda.run(useq.MDASequence(stage_positions=positions))
    assert all(-50.0 <= visited <= 50.0 for visited in z.visited)


@pytest.mark.slow
def test_an_autofocused_acquisition_takes_every_position_in_focus(trained_split_run):
    """Four positions whose focus differs by several DOF, two time points: the network trained
    in the tests brings most frames within 1 DOF; the second time point starts where the first
    autofocus at each position succeeded (else at the position's own z) and needs no more
    images; each frame carries its autofocus result."""
    (onnx_path,) = (trained_split_run / ".onnx").glob("*.onnx")
    slide = slide_10x(seed=5)
    core = demo_core(slide)
    engine = AutofocusEngine(core, FocusPredictor(onnx_path), tolerance_um=0.5 * DOF_10X, max_images=4,
                             z_range_um=(-20 * DOF_10X, 20 * DOF_10X))
    core.mda.set_engine(engine)
    frames = []

    @core.mda.events.frameReady.connect
    def record(image, event, metadata):
        x, y = core.getXYPosition()
        frames.append((event.index["t"], (core.getZPosition() - slide.focus_z_um(x, y)) / DOF_10X,
                       metadata["autofocus"]))

    positions = positions_apart_in_focus(slide, 4)
    starts = [slide.focus_z_um(p.x, p.y) / DOF_10X for p in positions]
    assert max(starts) - min(starts) > 3
    core.mda.run(useq.MDASequence(stage_positions=positions, time_plan={"interval": 0, "loops": 2},
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))
    print("frames (t, DOF from focus, autofocus):", frames)
    assert len(frames) == 8 and all(summary["images"] >= 1 for _, _, summary in frames)
    assert sum(abs(dof) <= 1 for _, dof, _ in frames) >= 6
    images = {t: np.mean([summary["images"] for time, _, summary in frames if time == t]) for t in (0, 1)}
    assert images[1] <= images[0], images
    first, second = frames[:4], frames[4:]
    starts_again = [dof - summary["z_moved_um"] / DOF_10X for _, dof, summary in second]
    # the corrected z where the first autofocus succeeded; where it did not, the position's own z
    expected = [dof if summary["focused"] else dof - summary["z_moved_um"] / DOF_10X for _, dof, summary in first]
    assert starts_again == pytest.approx(expected, abs=1e-6)


def camera_frame(light: np.ndarray, fine: int, scale: float, rng) -> np.ndarray:
    """The camera frame of `light`, rendered `fine` times finer than the trained pixel, on a
    camera whose pixels are `scale` times the trained one: each pixel integrates the light
    over its area, then shot and read noise."""
    from PIL import Image

    from autofocuskit.optics import camera_image

    size = round(light.shape[0] / fine / scale)
    channels = [np.asarray(Image.fromarray(light[..., c].astype(np.float32)).resize((size, size), Image.Resampling.BOX))
                for c in range(3)]
    return camera_image(rng, np.stack(channels, axis=-1))


@pytest.mark.slow
def test_the_same_field_at_another_pixel_size_gives_the_same_estimate(trained_split_run):
    """One field through the demo optics at a third of the trained 0.65 um pixel, seen by
    cameras of 0.65, 0.455 and 0.91 um pixels: resampled to the trained size, the estimates
    agree within 0.25 DOF; used as they come, the other cameras' do not."""
    from autofocuskit.optics import VirtualMicroscope

    (onnx_path,) = (trained_split_run / ".onnx").glob("*.onnx")
    fine, rng = 3, np.random.default_rng(0)
    scope = VirtualMicroscope(10, 0.3, size=fine * 448, seed=7, pixel_um=0.65 / fine)
    resampled, as_they_come = [], []
    for defocus_dof in (-3.0, -1.5, 1.5, 3.0):
        scope.defocus_um = defocus_dof * DOF_10X
        light = scope.optical_image()
        trained = FocusPredictor(onnx_path).predict(camera_frame(light, fine, 1.0, rng)).defocus_um
        for scale in (0.7, 1.4):
            frame = camera_frame(light, fine, scale, rng)
            estimate = FocusPredictor(onnx_path, pixel_size_um=0.65 * scale).predict(frame).defocus_um
            resampled.append(abs(estimate - trained) / DOF_10X)
            as_they_come.append(abs(FocusPredictor(onnx_path).predict(frame).defocus_um - trained) / DOF_10X)
    print("resampled (DOF):", np.round(resampled, 3), "as they come:", np.round(as_they_come, 3))
    assert max(resampled) <= 0.25
    assert np.mean(as_they_come) > 2 * np.mean(resampled)




class ScriptedFocus(FocusPredictor):
    """Reads the core's distance from a focus at `focus_z(x, y)` as SHARP says it would, side
    right, and records what it saw (z, channel, exposure); `fails(x, y)` raises a camera error."""

    def __init__(self, model, core, focus_z=lambda x, y: 30.0, fails=lambda x, y: False):
        super().__init__(model)
        self.core, self.focus_z, self.fails, self.error_model, self.seen = core, focus_z, fails, SHARP, []

    def predict(self, frame):
        x, y = self.core.getXYPosition()
        channel = self.core.getCurrentConfig("Channel") if "Channel" in self.core.getAvailableConfigGroups() else ""
        self.seen.append((x, self.core.getZPosition(), channel, self.core.getExposure()))
        if self.fails(x, y):
            raise RuntimeError("Camera timed out")
        defocus = self.core.getZPosition() - self.focus_z(x, y)
        distance = float(SHARP.mean_distance(np.array(abs(defocus))))
        return FocusEstimate(math.copysign(distance, defocus), "ok", distance, None, 0.0, 16, 16, "", 0.1)


@pytest.fixture
def demo_config_core():
    """A core with Micro-Manager's demo configuration on its own device adapters (mm-test-adapters)."""
    core = configured_core("MMConfig_demo.cfg")
    yield core
    core.unloadAllDevices()


def recorded(core, method: str) -> list:
    """The arguments of every call of the core's `method` from now on (the call still goes to the core)."""
    calls, original = [], getattr(core, method)

    def record(*args):
        calls.append(args)
        return original(*args)

    setattr(core, method, record)
    return calls


def test_a_hardware_sequenced_z_stack_gets_its_fields_correction(demo_config_core, model_10x):
    core = demo_config_core
    core.setProperty("Z", "UseSequences", "Yes")
    loaded = recorded(core, "loadStageSequence")
    core.mda.set_engine(AutofocusEngine(core, ScriptedFocus(model_10x, core), tolerance_um=1.0, z_range_um=(0, 80)))
    frames = []
    core.mda.events.frameReady.connect(lambda image, event, metadata: frames.append(metadata["autofocus"]["focused"]))
    core.mda.run(useq.MDASequence(stage_positions=[useq.Position(x=0.0, y=0.0, z=0.0)],
                                  z_plan=useq.ZRangeAround(range=20, step=10),
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))
    assert len(loaded) == 1 and frames == [True] * 3
    assert np.allclose(loaded[0][1], [20, 30, 40], atol=1.0)  # focus at 30, the stack around it


def test_a_hardware_sequence_that_would_leave_the_range_is_skipped_and_nothing_loaded(demo_config_core, model_10x):
    core = demo_config_core
    core.setProperty("Z", "UseSequences", "Yes")
    loaded = recorded(core, "loadStageSequence")
    moves = recorded(core, "setZPosition")
    core.mda.set_engine(AutofocusEngine(core, ScriptedFocus(model_10x, core), tolerance_um=1.0, z_range_um=(0, 35)))
    frames = []
    core.mda.events.frameReady.connect(lambda image, event, metadata: frames.append(event))
    core.mda.run(useq.MDASequence(stage_positions=[useq.Position(x=0.0, y=0.0, z=0.0)],
                                  z_plan=useq.ZRangeAround(range=20, step=10),
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))
    assert loaded == [] and frames == [] and all(0 <= z <= 35 for (z,) in moves)


def test_the_autofocus_frames_use_the_focus_channel_and_the_plans_frames_their_own(demo_config_core, model_10x):
    core = demo_config_core
    predictor = ScriptedFocus(model_10x, core)
    core.mda.set_engine(AutofocusEngine(core, predictor, tolerance_um=1.0, focus_preset=("Channel", "DAPI"),
                                        focus_exposure_ms=5.0))
    frames = []
    core.mda.events.frameReady.connect(lambda image, event, metadata: frames.append(
        (core.getCurrentConfig("Channel"), core.getExposure())))
    core.mda.run(useq.MDASequence(stage_positions=[useq.Position(x=0.0, y=0.0, z=0.0)],
                                  channels=[useq.Channel(config="FITC", exposure=50.0)],
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))
    assert predictor.seen and {(channel, exposure) for _, _, channel, exposure in predictor.seen} == {("DAPI", 5.0)}
    assert frames == [("FITC", 50.0)]
    with pytest.raises(MicroscopeError, match="no preset 'BF' in group 'Channel'"):
        AutofocusEngine(core, predictor, tolerance_um=1.0, focus_preset=("Channel", "BF"))


def test_a_hardware_focus_lock_and_the_network_share_a_plan(demo_config_core, model_10x):
    """Position 0 is the network's, position 1 names the demo's Autofocus device: pymmcore-plus's
    own handling runs fullFocus there, the network is never asked there."""
    core = demo_config_core
    full_focus = recorded(core, "fullFocus")
    predictor = ScriptedFocus(model_10x, core)
    core.mda.set_engine(AutofocusEngine(core, predictor, tolerance_um=1.0))
    hardware = useq.MDASequence(autofocus_plan=useq.AxesBasedAF(axes=("p",), autofocus_device_name="Autofocus"))
    core.mda.run(useq.MDASequence(stage_positions=[useq.Position(x=0.0, y=0.0, z=0.0),
                                                   useq.Position(x=500.0, y=0.0, z=0.0, sequence=hardware)],
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))
    assert len(full_focus) == 1 and predictor.seen and {x for x, *_ in predictor.seen} == {0.0}


def test_a_motor_offset_on_a_network_autofocus_is_refused_by_name(demo_config_core, model_10x):
    core = demo_config_core
    core.mda.set_engine(AutofocusEngine(core, ScriptedFocus(model_10x, core), tolerance_um=1.0))
    with pytest.raises(MicroscopeError, match="autofocus_motor_offset=5.0"):
        core.mda.run(useq.MDASequence(stage_positions=[useq.Position(x=0.0, y=0.0, z=0.0)],
                                      autofocus_plan=useq.AxesBasedAF(axes=("p",), autofocus_motor_offset=5.0)))


def policy_run(model, on_failure: str, fails=lambda x, y: x == 500.0, focus_z=lambda x, y: 30.0, caplog=None):
    """Three positions, two time points, an autofocus at each; the camera fails at position 1
    (x = 500): the frames taken as (t, p, metadata["autofocus"]), the predictor, the engine."""
    core = demo_core(slide_10x())
    predictor = ScriptedFocus(model, core, focus_z=focus_z, fails=fails)
    engine = AutofocusEngine(core, predictor, tolerance_um=1.0, z_range_um=(-100, 100), on_failure=on_failure)
    core.mda.set_engine(engine)
    frames = []
    core.mda.events.frameReady.connect(lambda image, event, metadata: frames.append(
        (event.index["t"], event.index["p"], metadata["autofocus"], core.getZPosition())))
    positions = [useq.Position(x=x, y=0.0, z=0.0) for x in (0.0, 500.0, 1000.0)]
    core.mda.run(useq.MDASequence(stage_positions=positions, time_plan={"interval": 0, "loops": 2},
                                  autofocus_plan=useq.AxesBasedAF(axes=("t", "p"))))
    return frames, predictor, engine


def test_a_failed_autofocus_keeps_the_acquisition_going_at_the_last_good_z(model_10x, caplog):
    with caplog.at_level(logging.WARNING, "autofocuskit"):
        frames, predictor, engine = policy_run(model_10x, "keep")
    assert len(frames) == 6
    failed = [(summary, z) for t, p, summary, z in frames if p == 1]
    assert all(not summary["focused"] and summary["outcome"] == "failed" and z == 0.0 for summary, z in failed)
    assert all(summary["focused"] and abs(z - 30.0) <= 1.0 for t, p, summary, z in frames if p != 1)
    assert sum(x == 500.0 for x, *_ in predictor.seen) == 2 * 3  # max_retries tries at each time point
    assert "t=0 p=1: RuntimeError: Camera timed out" in caplog.text and (1, None) not in engine.fields.confirmed


def test_skip_leaves_out_the_failed_fields_frames_and_raise_ends_the_acquisition(model_10x):
    frames, _, _ = policy_run(model_10x, "skip")
    assert [(t, p) for t, p, _, _ in frames] == [(0, 0), (0, 2), (1, 0), (1, 2)]
    with pytest.raises(AutofocusFailed, match="Camera timed out"):
        policy_run(model_10x, "raise")


def test_a_network_that_cannot_focus_carries_nothing_into_later_time_points(model_10x):
    """Focus out of reach at every position: every loop ends unconverged, the frames are flagged,
    no correction is confirmed, and the second time point starts where the first did."""
    frames, predictor, engine = policy_run(model_10x, "keep", fails=lambda x, y: False,
                                           focus_z=lambda x, y: 1000.0)
    assert len(frames) == 6 and all(summary["outcome"] == "unconverged" for _, _, summary, _ in frames)
    assert engine.fields.confirmed == {}
    starts = [z for x, z, *_ in predictor.seen if z == 0.0]
    assert len(starts) == 6  # each autofocus began at the position's own z


def test_each_grid_tile_keeps_its_own_correction(model_10x):
    slide = slide_10x()
    core = demo_core(slide)
    predictor = ScriptedFocus(model_10x, core, focus_z=lambda x, y: 0.05 * x)
    engine = AutofocusEngine(core, predictor, tolerance_um=1.0)
    core.mda.set_engine(engine)
    grid = useq.MDASequence(grid_plan=useq.GridRowsColumns(rows=1, columns=2))
    core.mda.run(useq.MDASequence(stage_positions=[useq.Position(x=0.0, y=0.0, z=0.0, sequence=grid)],
                                  autofocus_plan=useq.AxesBasedAF(axes=("p", "g"))))
    corrections = engine.fields.confirmed
    assert set(corrections) == {(0, 0), (0, 1)}
    first, last = predictor.seen[0][0], predictor.seen[-1][0]  # the tiles' x
    assert corrections[(0, 1)] - corrections[(0, 0)] == pytest.approx(0.05 * (last - first), abs=2.0)  # 2 tolerances
    assert abs(0.05 * (last - first)) > 5


def test_on_the_demo_adapters_a_camera_that_times_out_at_one_position_skips_only_its_frames(demo_config_core,
                                                                                            model_10x):
    core = demo_config_core
    predictor = ScriptedFocus(model_10x, core, fails=lambda x, y: abs(x - 500.0) < 1)  # the stage's own steps
    core.mda.set_engine(AutofocusEngine(core, predictor, tolerance_um=1.0, z_range_um=(0, 80), on_failure="skip"))
    frames = []
    core.mda.events.frameReady.connect(lambda image, event, metadata: frames.append(event.index["p"]))
    core.mda.run(useq.MDASequence(stage_positions=[useq.Position(x=x, y=0.0, z=0.0) for x in (0.0, 500.0, 1000.0)],
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))
    tries = useq.HardwareAutofocus().max_retries
    assert frames == [0, 2] and sum(abs(x - 500.0) < 1 for x, *_ in predictor.seen) == tries
