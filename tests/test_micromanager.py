"""micromanager.py: the demo acquisition and the demo calibration from the command line, and one
autofocus on Micro-Manager's demo configuration with a preset chosen."""
import pytest

from autofocuskit.error_model import ErrorModel
from autofocuskit.exported_model import ModelMetadata
from autofocuskit.schema import CAMERA_PIXEL_UM, depth_of_field_um
from conftest import run_script, untrained_onnx

DOF_10X = depth_of_field_um(10, 0.3)


@pytest.mark.slow
def test_the_demo_command_runs_an_autofocused_acquisition_and_a_calibration(model_10x, tmp_path):
    demo = run_script("micromanager.py", "--model", model_10x, "--demo", "--magnification", 10, "--na", 0.3,
                      "--positions", 2, "--time_points", 2, "--drift_dof", 0.5, "--frame_size", 448, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "t 1 position 1: start" in demo.stdout and "the focus stage stayed within" in demo.stdout
    assert "drift between time points up to 0.5 DOF" in demo.stdout
    assert "the integration itself" in demo.stdout and "Micro-Manager" not in demo.stderr
    calibration = run_script("micromanager.py", "--model", model_10x, "--demo", "--magnification", 10, "--na", 0.3,
                             "--calibrate", 6 * DOF_10X, "--steps", 7, "--frame_size", 448, cwd=tmp_path)
    assert calibration.returncode == 0, calibration.stderr
    assert "distance error" in calibration.stdout and (tmp_path / "calibration.png").is_file()
    missing = run_script("micromanager.py", "--model", tmp_path / "none.onnx", "--demo", cwd=tmp_path)
    assert missing.returncode == 1 and "none.onnx does not exist" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_one_autofocus_on_the_demo_configuration_with_its_40x_objective(tmp_path):
    """MMConfig_demo.cfg starts at its 10X objective; --preset Objective 40X chooses the one the
    model was trained at. The demo camera's image does not change with z: any result is the
    network's honest answer, flagged when it did not converge."""
    model = untrained_onnx(tmp_path / "model_40x.onnx", ModelMetadata(
        label_abs_max=40.0, pixel_size_um={"40x/0.75": CAMERA_PIXEL_UM / 40}, error_model=ErrorModel.conservative(40.0)))
    once = run_script("micromanager.py", "--model", model, "--config", "MMConfig_demo.cfg", "--preset", "Objective",
                      "40X", "--magnification", 40, "--na", 0.75, "--z_range_um", -50, 50, cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    assert once.stdout.startswith("z 0.00 -> ") and "'stop_reason'" in once.stdout
    assert ("NOT FOCUSED" in once.stdout) != ("'converged': True" in once.stdout)
    wrong = run_script("micromanager.py", "--model", model, "--config", "MMConfig_demo.cfg", "--preset", "Objective",
                       "80X", cwd=tmp_path)
    assert wrong.returncode == 1 and "--preset Objective 80X: the core has no preset" in wrong.stderr
