"""predictor.py: frames to estimates as the network sees their tiles, 8/12/16-bit and float frames, resampling to the trained pixel size, bad frames and models refused by name."""
import math
from dataclasses import replace

import numpy as np
import onnx
import pytest

from autofocuskit.error_model import ErrorModel
from autofocuskit.exported_model import ModelFileError, ModelMetadata
from autofocuskit.imaging import IMAGE_SIZE
from conftest import untrained_onnx
from autofocuskit.predictor import FocusError, FocusPredictor
from autofocuskit.schema import depth_of_field_um


def test_16_bit_and_float_frames_give_what_the_8_bit_frame_gives(soaf_onnx, tissue_frame):
    predictor = FocusPredictor(soaf_onnx)
    expected = predictor.predict(tissue_frame)
    assert expected.status == "ok" and expected.tiles_used == 16
    for frame in (tissue_frame.astype(np.uint16) * 257, tissue_frame.astype(np.float32) / 255):
        assert predictor.predict(frame).defocus_um == pytest.approx(expected.defocus_um, abs=1e-4)


def test_a_frame_predicts_what_the_network_says_of_its_tiles(soaf_onnx, tissue_frame):
    """The median distance of the network's outputs on each tile (fed as the dataset classes feed
    images), on the side of their median."""
    predictor = FocusPredictor(soaf_onnx, tiles_per_side=2)
    import onnxruntime as ort

    session = ort.InferenceSession(str(soaf_onnx))
    tiles = [tissue_frame[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE] for y in (0, 288) for x in (0, 288)]
    outputs = [session.run(None, {"input": (tile.transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)})[0].item() for tile in tiles]
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
    moaf = untrained_onnx(tmp_path / "moaf.onnx", moaf=True)
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
    moaf = untrained_onnx(tmp_path / "moaf.onnx", MEASURED, moaf=True)
    in_dof = FocusPredictor(moaf, magnification=10, na=0.3, dof_um=1.0).predict(tissue_frame)
    in_um = FocusPredictor(moaf, magnification=10, na=0.3).predict(tissue_frame)
    assert in_um.defocus_um == pytest.approx(in_dof.defocus_um * depth_of_field_um(10, 0.3), rel=1e-5)


MEASURED = ModelMetadata(error_model=ErrorModel.conservative(5.0))  # what myTest.py writes, in the model's unit


def test_an_estimate_beyond_the_trained_range_says_so(soaf_onnx, tissue_frame):
    estimate = FocusPredictor(soaf_onnx, max_distance_um=1e-3).predict(tissue_frame)
    assert estimate.status == "out_of_range"
    assert estimate.reason == f"distance {estimate.distance_um:.2f} um is beyond the largest trained on, 0.00 um"


def test_a_model_exported_without_an_error_model_gets_a_conservative_one_and_a_warning(tmp_path):
    old = untrained_onnx(tmp_path / "old.onnx", ModelMetadata(label_abs_max=40.0))
    with pytest.warns(UserWarning, match="no measured error model"):
        predictor = FocusPredictor(old)
    assert not predictor.error_model.measured and predictor.error_model.saturation == 40.0


def test_twelve_bit_frames_in_16_bit_containers_are_scaled_by_the_camera_bit_depth(soaf_onnx, tissue_frame):
    twelve_bit = np.rint(tissue_frame.astype(np.float64) * 4095 / 255).astype(np.uint16)
    expected = FocusPredictor(soaf_onnx).predict(tissue_frame)
    scaled = FocusPredictor(soaf_onnx, bit_depth=12).predict(twelve_bit)
    assert scaled.defocus_um == pytest.approx(expected.defocus_um, abs=1e-4)
    dark = FocusPredictor(soaf_onnx).predict(twelve_bit)  # as a 16-bit image it is nearly black
    assert dark.status == "no_sample"


def with_pixel_size(tmp_path, pixel_um: float):
    metadata = ModelMetadata(label_abs_max=40.0, pixel_size_um={"10x/0.3": pixel_um},
                             error_model=ErrorModel.conservative(40.0))
    return untrained_onnx(tmp_path / "soaf.onnx", metadata)


def test_frames_are_resampled_to_the_trained_pixel_size(tmp_path, tissue_frame):
    """A frame at 0.65 um taken as 0.4875 um pixels (0.75x the trained size) is shrunk by area
    averaging before tiling; more than 2x coarser is refused; a model without the size warns."""
    from autofocuskit.imaging import resample

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
        FocusPredictor(untrained_onnx(tmp_path / "old.onnx", MEASURED),
                       pixel_size_um=0.5)


def test_a_moaf_model_takes_the_pixel_size_of_its_objective_or_the_camera_pixel(tmp_path):
    metadata = replace(MEASURED, pixel_size_um={"10x/0.3": 0.65, "20x/0.7": 0.325}, camera_pixel_um=6.5)
    moaf = untrained_onnx(tmp_path / "moaf.onnx", metadata, moaf=True)
    assert FocusPredictor(moaf, magnification=20, na=0.7).trained_pixel_um == 0.325
    assert FocusPredictor(moaf, magnification=40, na=0.75).trained_pixel_um == pytest.approx(6.5 / 40)
