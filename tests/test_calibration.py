"""calibration.py: a z-sweep finds focus as the dataset tool does, and the saved offset is applied."""

import pytest
from conftest import slide_10x

from autofocuskit.predictor import FocusEstimate, FocusPredictor
from autofocuskit.schema import depth_of_field_um

DOF_10X = depth_of_field_um(10, 0.3)
from autofocuskit.calibration import calibrate
from autofocuskit.demo_microscope import DemoZStage, demo_core
from autofocuskit.microscope import MicroscopeError
from autofocuskit.schema import depth_of_field_um


class OffsetPredictor(FocusPredictor):
    """Knows the true defocus of the demo stage and says it 1.5 um too high, on either side."""

    def __init__(self, model, slide, stage):
        super().__init__(model)
        self.slide, self.stage = slide, stage

    def predict(self, frame):
        defocus = self.stage.z_um - self.slide.focus_z_um(0, 0) + 1.5
        return FocusEstimate(defocus, "ok", abs(defocus), None, 0.0, 16, 16)


def test_calibration_finds_focus_as_the_dataset_tool_does_and_the_saved_offset_is_applied(tmp_path, model_10x):
    slide, z = slide_10x(seed=4), DemoZStage()
    core = demo_core(slide, z=z)
    core.setZPosition(slide.focus_z_um(0, 0) + 0.3 * DOF_10X)
    model = tmp_path / "model.onnx"
    model.write_bytes(model_10x.read_bytes())
    calibration = calibrate(core, OffsetPredictor(model, slide, z), span_um=6 * DOF_10X, steps=13,
                            plot_path=tmp_path / "calibration.png", save=True)
    assert abs(calibration.focus_z_um - slide.focus_z_um(0, 0)) < 0.25 * DOF_10X
    found_minus_true = calibration.focus_z_um - slide.focus_z_um(0, 0)
    assert calibration.scale == pytest.approx(1.0) and calibration.offset_um == pytest.approx(1.5 + found_minus_true)
    assert calibration.side_accuracy == 1.0 and core.getZPosition() == pytest.approx(slide.focus_z_um(0, 0) + 0.3 * DOF_10X)
    assert (tmp_path / "calibration.png").stat().st_size > 0 and "distance error" in calibration.report()
    assert FocusPredictor(model).offset_um == pytest.approx(calibration.offset_um)
    assert FocusPredictor(model_10x).offset_um == 0.0
    with pytest.raises(MicroscopeError, match="leaves z_range_um"):
        calibrate(core, FocusPredictor(model), span_um=6 * DOF_10X, steps=5, z_range_um=(-1.0, 1.0))
