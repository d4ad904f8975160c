"""autofocus.py: frames to estimates as the network sees their tiles, bad frames and models refused by
name, and the focus loop's rules with scripted predictors and on the virtual microscope."""
import json
import math

import numpy as np
import onnx
import pytest
import torch

from autofocus import FocusError, FocusEstimate, FocusPredictor, focus_loop
from exported_model import ModelFileError
from myModel import MOAFModel, SOAFModel, export_onnx
from optics import VirtualMicroscope
from schema import depth_of_field_um
from imaging import IMAGE_SIZE


def test_16_bit_and_float_frames_give_what_the_8_bit_frame_gives(soaf_onnx, tissue_frame):
    predictor = FocusPredictor(soaf_onnx)
    expected = predictor.predict(tissue_frame)
    assert expected.status == "ok" and expected.tiles_used == 16
    for frame in (tissue_frame.astype(np.uint16) * 257, tissue_frame.astype(np.float32) / 255):
        assert predictor.predict(frame).defocus_um == pytest.approx(expected.defocus_um, abs=1e-4)


def test_a_frame_predicts_what_the_network_says_of_its_tiles(soaf_onnx, tissue_frame):
    """The median distance of the network's outputs on each tile (fed as the dataset classes feed
    images), on the side of their median."""
    from torchvision.transforms.functional import to_tensor

    predictor = FocusPredictor(soaf_onnx, tiles_per_side=2)
    import onnxruntime as ort

    session = ort.InferenceSession(str(soaf_onnx))
    tiles = [tissue_frame[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE] for y in (0, 288) for x in (0, 288)]
    outputs = [session.run(None, {"input": to_tensor(tile)[None].numpy()})[0].item() for tile in tiles]
    expected = math.copysign(float(np.median(np.abs(outputs))), float(np.median(outputs)))
    assert predictor.predict(tissue_frame).defocus_um == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("frame, message", [
    (np.zeros((100, 600), np.uint8), f"at least {IMAGE_SIZE} x {IMAGE_SIZE}"),
    (np.zeros((300, 300, 4), np.uint8), "(H, W, 3)"),
    (np.full((300, 300), np.nan, np.float32), "NaN"),
])
def test_bad_frames_are_refused_by_name(soaf_onnx, frame, message):
    with pytest.raises(FocusError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FocusPredictor(soaf_onnx).predict(frame)


def test_models_that_cannot_be_used_are_refused(tmp_path):
    torch.manual_seed(0)
    moaf = export_onnx(MOAFModel(pretrained=False), tmp_path / "moaf.onnx")
    with pytest.raises(FocusError, match="MOAF model: give the objective"):
        FocusPredictor(moaf)
    foreign = tmp_path / "identity.onnx"
    value = onnx.helper.make_tensor_value_info
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "identity", [value("x", onnx.TensorProto.FLOAT, [1, 4])],
        [value("y", onnx.TensorProto.FLOAT, [1, 4])]), opset_imports=[onnx.helper.make_opsetid("", 17)]), foreign)
    with pytest.raises(ModelFileError, match="not an autofocus model"):
        FocusPredictor(foreign)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        FocusPredictor(tmp_path / "junk.onnx")


def test_moaf_predictions_are_converted_to_micrometres(tmp_path, tissue_frame):
    torch.manual_seed(0)
    moaf = export_onnx(MOAFModel(pretrained=False), tmp_path / "moaf.onnx")
    in_dof = FocusPredictor(moaf, magnification=10, na=0.3, dof_um=1.0).predict(tissue_frame)
    in_um = FocusPredictor(moaf, magnification=10, na=0.3).predict(tissue_frame)
    assert in_um.defocus_um == pytest.approx(in_dof.defocus_um * depth_of_field_um(10, 0.3), rel=1e-5)


class ScriptedPredictor:
    """Knows the true defocus of a simulated stage; says the right side when `sides` says so (a
    signed head's estimate unless `p_positive` is given)."""

    def __init__(self, stage, sides, max_distance_um=50.0, p_positive=None):
        self.stage, self.sides, self.max_distance_um = stage, iter(sides), max_distance_um
        self.p_positive = p_positive

    def predict(self, frame):
        true = self.stage["z"]
        if frame is None:
            return FocusEstimate(math.nan, "no_sample", math.nan, None, math.nan, 0, 16)
        side = math.copysign(1, true) * (1 if next(self.sides) else -1)
        status = "out_of_range" if abs(true) > self.max_distance_um else "ok"
        return FocusEstimate(side * abs(true), status, abs(true), self.p_positive, 0.0, 16, 16)


def scripted_loop(start, sides, p_positive=None, **options):
    stage = {"z": start}

    def move_by(delta):
        stage["z"] += delta
    result = focus_loop(lambda: stage, move_by, ScriptedPredictor(stage, sides, p_positive=p_positive), **options)
    return result, stage["z"]


def test_loop_moves_by_minus_the_defocus_and_stops_within_tolerance():
    result, end = scripted_loop(10.0, [True] * 5, tolerance_um=1.0)
    assert result.moves_um == [-10.0] and result.converged and result.images == 2 and end == 0.0
    assert result.stop_reason == "within_tolerance"


def test_an_estimate_within_tolerance_still_gets_its_move_bounded_by_the_largest_step():
    result, end = scripted_loop(0.8, [True] * 5, tolerance_um=1.0)
    assert result.moves_um == [-0.8] and result.converged and result.images == 1 and end == 0.0
    result, end = scripted_loop(-0.8, [True] * 5, tolerance_um=1.0, max_step_um=0.5)
    assert result.moves_um == [0.5] and result.converged and end == pytest.approx(-0.3)
    result, end = scripted_loop(0.8, [True] * 5, p_positive=0.7, tolerance_um=1.0)  # side unsure: no move
    assert result.moves_um == [] and result.converged and end == 0.8
    result, end = scripted_loop(0.8, [True] * 5, p_positive=0.95, tolerance_um=1.0)
    assert result.moves_um == [-0.8] and end == 0.0


def test_a_wrong_side_is_undone_when_the_distance_grows():
    """The side cue is wrong twice in a row; the blur grew after the first move, so the loop reverses."""
    result, end = scripted_loop(10.0, [False, False, True], tolerance_um=1.0)
    assert result.moves_um == [10.0, -20.0] and end == 0.0 and result.converged


class SaturatingPredictor(ScriptedPredictor):
    """Trained within +-12 um: beyond, its distance stays at 12 um."""

    def __init__(self, stage, sides):
        super().__init__(stage, sides, max_distance_um=12.0)

    def predict(self, frame):
        estimate = super().predict(frame)
        estimate.distance_um = min(estimate.distance_um, 12.0)
        estimate.defocus_um = math.copysign(estimate.distance_um, estimate.defocus_um)
        return estimate


def test_after_a_wrong_move_the_loop_trusts_the_distance_seen_before_it():
    """10 um the wrong way leaves the stage 20 um out, where the network says 12 (no visible change,
    but high in its range: saturated, not at its floor): back by 10 and on by 10."""
    stage = {"z": 10.0}

    def move_by(delta):
        stage["z"] += delta
    result = focus_loop(lambda: stage, move_by, SaturatingPredictor(stage, [False, True, True]), tolerance_um=1.0)
    assert result.moves_um == [10.0, -20.0] and stage["z"] == 0.0 and result.converged


def test_a_small_drop_from_where_the_network_saturates_still_counts_as_closer():
    """Trained to 40 um, it says 30 for anything beyond: from 45 um a 30 um move leaves 15 um, a
    drop of only half the move, but from the top of its range: closer, so on by 15."""
    stage = {"z": 45.0}

    class Predictor(ScriptedPredictor):
        def predict(self, frame):
            distance = min(abs(stage["z"]), 30.0)
            return FocusEstimate(distance, "ok", distance, None, 0.0, 16, 16)

    def move_by(delta):
        stage["z"] += delta
    result = focus_loop(lambda: stage, move_by, Predictor(stage, [], max_distance_um=40.0), tolerance_um=1.0)
    assert result.moves_um == [-30.0, -15.0] and stage["z"] == 0.0 and result.converged and result.images == 3


class FlooredPredictor(ScriptedPredictor):
    """Cannot resolve distances below 6 um: says 6 um there, on a random side."""

    def predict(self, frame):
        estimate = super().predict(frame)
        if estimate.distance_um < 6.0:
            estimate.distance_um = 6.0
            estimate.defocus_um = 6.0 if next(self.sides) else -6.0
        return estimate


def test_the_loop_stops_where_the_network_cannot_resolve_the_distance():
    stage = {"z": 30.0}

    def move_by(delta):
        stage["z"] += delta
    predictor = FlooredPredictor(stage, [True, True, False, True, True])
    predictor.stage["z"] = 30.0
    result = focus_loop(lambda: stage, move_by, predictor, tolerance_um=1.0)
    # 30 -> 0 (right), then 6 um on some side: a 6 um move leaves 6 um: no visible change, stop
    assert result.moves_um[0] == -30.0 and result.converged and len(result.moves_um) == 2
    assert abs(stage["z"]) == 6.0 and result.images == 3 and result.stop_reason == "unresolved"


def test_where_the_network_cannot_tell_two_places_apart_the_loop_keeps_the_one_it_rated_closer():
    """At 4 um it says -6 (its floor, the wrong side); at 10 um it says 8: less than half the 6 um
    move more, so no visible change, and 6 < 8: back to 4 um."""
    stage = {"z": 4.0}
    said = {4.0: -6.0, 10.0: 8.0}

    class Predictor:
        max_distance_um = 50.0

        def predict(self, frame):
            defocus = said[stage["z"]]
            return FocusEstimate(defocus, "ok", abs(defocus), None, 0.0, 16, 16)

    def move_by(delta):
        stage["z"] += delta
    result = focus_loop(lambda: stage, move_by, Predictor(), tolerance_um=1.0)
    assert result.moves_um == [6.0, -6.0] and stage["z"] == 4.0 and result.converged and result.images == 2


def test_every_move_is_bounded_and_out_of_range_moves_toward_the_side():
    """The third image is the last: no untested move after it, the stage stays where it was rated closest."""
    result, end = scripted_loop(-120.0, [True] * 5, tolerance_um=1.0, max_images=3, max_step_um=30.0)
    assert result.moves_um == [30.0, 30.0] and result.estimates[0].status == "out_of_range"
    assert not result.converged and end == -60.0 and result.stop_reason == "images_used_up"


def test_an_estimate_beyond_the_trained_range_says_so(soaf_onnx, tissue_frame):
    estimate = FocusPredictor(soaf_onnx, max_distance_um=1e-3).predict(tissue_frame)
    assert estimate.status == "out_of_range"
    assert estimate.reason == f"distance {estimate.distance_um:.2f} um is beyond the largest trained on, 0.00 um"


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
    """Focus 40 um below, the range ends 25 um below: moves of at most 10 um down to the limit, then stop there."""
    stage = {"z": 40.0}
    visited = []

    def move_by(delta):
        stage["z"] += delta
        visited.append(stage["z"])
    predictor = ScriptedPredictor(stage, [True] * 10)
    result = focus_loop(lambda: stage, move_by, predictor, tolerance_um=1.0, max_images=8, max_step_um=10.0,
                        z_range_um=(15.0, 100.0), z_um=lambda: stage["z"])
    assert min(visited) == 15.0 and stage["z"] == 15.0 and result.at_limit and result.stop_reason == "at_limit"
    assert not result.converged and result.images == 4 and result.moved_um == -25.0


def test_a_start_outside_the_range_moves_nothing():
    stage = {"z": 5.0}
    moves = []
    with pytest.raises(FocusError, match="outside z_range_um"):
        focus_loop(lambda: stage, moves.append, ScriptedPredictor(stage, [True]), tolerance_um=1.0,
                   z_range_um=(10.0, 20.0), z_um=lambda: stage["z"])
    assert moves == []


def test_a_loop_that_does_not_converge_ends_where_the_network_rated_closest():
    """The network says 8 um at 8, then 20 and 30 where the loop's moves took it: with the
    images used up, back to where it said 8."""
    stage = {"z": 8.0}
    said = iter([8.0, 20.0, 30.0])

    class Predictor:
        max_distance_um = 50.0

        def predict(self, frame):
            defocus = next(said)
            return FocusEstimate(defocus, "ok", abs(defocus), None, 0.0, 16, 16)

    def move_by(delta):
        stage["z"] += delta
    result = focus_loop(lambda: stage, move_by, Predictor(), tolerance_um=1.0, max_images=3)
    assert result.stop_reason == "images_used_up" and stage["z"] == 8.0 and result.moved_um == 0.0


def test_twelve_bit_frames_in_16_bit_containers_are_scaled_by_the_camera_bit_depth(soaf_onnx, tissue_frame):
    twelve_bit = np.rint(tissue_frame.astype(np.float64) * 4095 / 255).astype(np.uint16)
    expected = FocusPredictor(soaf_onnx).predict(tissue_frame)
    scaled = FocusPredictor(soaf_onnx, bit_depth=12).predict(twelve_bit)
    assert scaled.defocus_um == pytest.approx(expected.defocus_um, abs=1e-4)
    dark = FocusPredictor(soaf_onnx).predict(twelve_bit)  # as a 16-bit image it is nearly black
    assert dark.status == "no_sample"


def with_pixel_size(tmp_path, pixel_um: float):
    torch.manual_seed(0)
    metadata = {"label_abs_max": "40.0", "pixel_size_um": json.dumps({"10x/0.3": pixel_um})}
    return export_onnx(SOAFModel(pretrained=False).eval(), tmp_path / "soaf.onnx", metadata)


def test_frames_are_resampled_to_the_trained_pixel_size(tmp_path, tissue_frame):
    """A frame at 0.65 um taken as 0.4875 um pixels (0.75x the trained size) is shrunk by area
    averaging before tiling; more than 2x coarser is refused; a model without the size warns."""
    from imaging import resample

    model = with_pixel_size(tmp_path, 0.65)
    predictor = FocusPredictor(model, pixel_size_um=0.4875)
    assert predictor.trained_pixel_um == 0.65 and predictor.scale == pytest.approx(0.75)
    tiles, total = predictor.tiles(tissue_frame)
    assert total == 16 and tiles.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
    shrunk = resample(tissue_frame, 0.75)
    assert shrunk.shape == (384, 384, 3) and np.array_equal(tiles[0], shrunk[:IMAGE_SIZE, :IMAGE_SIZE])
    assert FocusPredictor(model, pixel_size_um=0.65).scale is None
    with pytest.raises(FocusError, match="2.2x coarser than the 0.65 um"):
        FocusPredictor(model, pixel_size_um=1.43)
    with pytest.warns(UserWarning, match="does not record the pixel size"):
        FocusPredictor(export_onnx(SOAFModel(pretrained=False).eval(), tmp_path / "old.onnx"), pixel_size_um=0.5)


def test_a_moaf_model_takes_the_pixel_size_of_its_objective_or_the_camera_pixel(tmp_path):
    torch.manual_seed(0)
    metadata = {"pixel_size_um": json.dumps({"10x/0.3": 0.65, "20x/0.7": 0.325}), "camera_pixel_um": "6.5"}
    moaf = export_onnx(MOAFModel(pretrained=False).eval(), tmp_path / "moaf.onnx", metadata)
    assert FocusPredictor(moaf, magnification=20, na=0.7).trained_pixel_um == 0.325
    assert FocusPredictor(moaf, magnification=40, na=0.75).trained_pixel_um == pytest.approx(6.5 / 40)
