"""focus.py: the command line prints one estimate per image and refuses bad input by name."""
import json

import numpy as np

import pytest

from conftest import run_script


@pytest.mark.slow
def test_command_line_prints_one_estimate_per_image(soaf_onnx, tissue_frame, tmp_path):
    from PIL import Image

    Image.fromarray((tissue_frame[..., 1].astype(np.uint16) * 257)).save(tmp_path / "frame.tif")
    result = run_script("focus.py", "--model", soaf_onnx, tmp_path / "frame.tif", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    estimate = json.loads(result.stdout)
    assert estimate["status"] == "ok" and estimate["tiles_used"] == 16
    missing = run_script("focus.py", "--model", tmp_path / "none.onnx", tmp_path / "frame.tif", cwd=tmp_path)
    assert missing.returncode != 0 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
