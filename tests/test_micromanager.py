"""micromanager.py: the demo acquisition and the demo calibration from the command line."""

import pytest

from autofocuskit.schema import depth_of_field_um

DOF_10X = depth_of_field_um(10, 0.3)
from autofocuskit.schema import depth_of_field_um


@pytest.mark.slow
def test_the_demo_command_runs_an_autofocused_acquisition_and_a_calibration(model_10x, tmp_path):
    from conftest import run_script

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
