"""exported_model.py: the one contract of the exported file: metadata written and read back the same,
keys that older files lack fall back as documented, keys that are there and broken are refused with the
file and the key named; the calibration beside the model."""
import json
from dataclasses import replace

import onnx
import pytest

from autofocuskit.error_model import ErrorModel
from autofocuskit.exported_model import (METADATA_FALLBACKS, ModelFileError, ModelMetadata, calibrated_offset_um,
                                         open_session, read_metadata, write_calibration, write_metadata)
from autofocuskit.predictor import FocusPredictor
from conftest import untrained_onnx

WRITTEN = ModelMetadata(task="soaf", unit="um", head="signed", label_abs_max=40.0, pixel_size_um={"10x/0.3": 0.65},
                        camera_pixel_um=6.5, error_model=replace(ErrorModel.conservative(40.0), measured=True))


def with_props(path, props: dict):
    """The file at `path` with its metadata_props replaced by `props`, as a hand-edited copy would be."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def test_metadata_is_read_back_as_written(tmp_path):
    path = untrained_onnx(tmp_path / "model.onnx", WRITTEN)
    read = read_metadata(open_session(path), path)
    assert read == WRITTEN
    assert set(WRITTEN.to_props()) == set(METADATA_FALLBACKS)


def test_a_file_without_metadata_falls_back_to_what_its_graph_says(tmp_path):
    path = untrained_onnx(tmp_path / "bare.onnx")
    assert read_metadata(open_session(path), path) == ModelMetadata()


@pytest.mark.parametrize("key, value, message", [
    ("error_model", json.dumps({"floor": 1.0}), "missing"),
    ("error_model", json.dumps({**json.loads(ErrorModel.conservative(40.0).to_metadata()), "floor": float("nan")}),
     "finite"),
    ("error_model", "{not json", "Expecting"),
    ("pixel_size_um", "-3", "JSON object"),
    ("pixel_size_um", json.dumps({"10x/0.3": -3}), "positive"),
    ("label_abs_max", "0", "positive"),
    ("camera_pixel_um", "nan", "positive"),
])
def test_a_broken_key_is_refused_with_the_file_and_the_key_named(tmp_path, key, value, message):
    path = with_props(untrained_onnx(tmp_path / "edited.onnx", WRITTEN), {**WRITTEN.to_props(), key: value})
    with pytest.raises(ModelFileError, match=rf"edited.onnx: metadata key '{key}' is broken .*{message}"):
        FocusPredictor(path)


def test_the_calibration_beside_the_model_applies_to_its_objective_only(tmp_path):
    model = tmp_path / "model.onnx"
    write_calibration(model, "20x/0.7", 0.4, {"steps": 21})
    assert calibrated_offset_um(model, "20x/0.7") == 0.4 and calibrated_offset_um(model, "10x/0.3") == 0.0
    model.with_suffix(".calibration.json").write_text("{broken")
    with pytest.raises(ModelFileError, match="cannot read the calibration"):
        calibrated_offset_um(model, "20x/0.7")


def test_write_metadata_replaces_the_files_keys(tmp_path):
    path = untrained_onnx(tmp_path / "model.onnx", WRITTEN)
    write_metadata(path, ModelMetadata(task="soaf"))
    assert read_metadata(open_session(path), path) == ModelMetadata(task="soaf")
