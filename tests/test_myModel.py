"""myModel.py: the script prints a summary and the output shape and writes an ONNX file through the one export path; the notebook imports."""

import pytest
from conftest import run_script


@pytest.mark.slow
@pytest.mark.parametrize("task", ["soaf", "moaf"])
def test_model_script_prints_summary_shape_and_writes_onnx(tmp_path, task):
    result = run_script("myModel.py", "--task", task, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{task.upper()}Model" in result.stdout and "Total params" in result.stdout
    assert "test output shape: (1, 1)" in result.stdout
    assert (tmp_path / ".onnx" / f"{task}_model.onnx").stat().st_size > 100_000
