"""focus.py: the command line prints one estimate per image as text or valid JSON, says why there is
no estimate and exits non-zero then, and refuses bad input by name."""
import json

import numpy as np
import pytest
from conftest import run_script
from PIL import Image

from autofocuskit.loop import FocusResult
from autofocuskit.optics import VirtualMicroscope
from autofocuskit.predictor import FocusEstimate
from focus import as_json, by_first_side, claims_held, described, first_side_right, get_args_parser, main


@pytest.mark.slow
def test_command_line_prints_one_estimate_per_image(soaf_onnx, tissue_frame, tmp_path):
    Image.fromarray((tissue_frame[..., 1].astype(np.uint16) * 257)).save(tmp_path / "frame.tif")
    result = run_script("focus.py", "--model", soaf_onnx, tmp_path / "frame.tif", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    estimate = json.loads(result.stdout)
    assert estimate["status"] == "ok" and estimate["tiles_used"] == 16
    missing = run_script("focus.py", "--model", tmp_path / "none.onnx", tmp_path / "frame.tif", cwd=tmp_path)
    assert missing.returncode != 0 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_a_frame_without_an_estimate_says_why_in_valid_json_and_exits_non_zero(soaf_onnx, tmp_path):
    Image.fromarray(VirtualMicroscope(10, 0.3, size=448, empty=True).acquire()).save(tmp_path / "blank.png")
    result = run_script("focus.py", "--model", soaf_onnx, tmp_path / "blank.png", "--json", cwd=tmp_path)
    assert result.returncode == 1 and "no estimate for" in result.stderr and "Traceback" not in result.stderr
    estimate = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert estimate["status"] == "no_sample" and estimate["defocus_um"] is None
    assert "fewer than min_tiles 3" in estimate["reason"]


def test_the_text_line_names_the_reason_and_never_a_move_of_nan():
    none = FocusEstimate(float("nan"), "no_sample", float("nan"), None, float("nan"), 1, 16, "1 of 16 tiles ...")
    assert described("blank.png", none) == "blank.png: no_sample, no estimate: 1 of 16 tiles ..."
    far = FocusEstimate(60.0, "out_of_range", 60.0, None, 2.0, 16, 16, "distance 60.00 um is beyond ...")
    assert "out_of_range (distance 60.00 um is beyond ...), defocus +60.00 um" in described("far.png", far)
    assert as_json({"defocus_um": float("nan"), "tiles_used": 1}) == {"defocus_um": None, "tiles_used": 1}


def test_simulated_trials_report_images_stops_and_whether_the_loops_claims_held(soaf_onnx, capsys):
    main(get_args_parser().parse_args(["--model", str(soaf_onnx), "--simulate", "--magnification", "10", "--na", "0.3",
                                       "--trials", "2", "--max_images", "2", "--frame_size", "448"]))
    out = capsys.readouterr().out
    assert out.count("trial ") == 2 and "stopped after" in out and "2 trials, start within +-5.0 DOF" in out
    assert "within 1 DOF when stopped after at most 2 / 3 / 4 images:" in out and "ms per image" in out
    assert "the first image read the wrong side of focus in" in out
    honest = claims_held(np.full(50, 0.9), np.arange(50) < 44)
    assert honest.startswith("50 trials stopped as in focus") and "88% were" in honest and "too kind" not in honest
    assert "too kind" in claims_held(np.full(50, 0.9), np.arange(50) < 35)


def test_trials_are_told_apart_by_the_side_their_first_image_read():
    # four trials from beyond 1 DOF, three read right (two of them in focus by 3 images), one
    # wrong (in focus only after 4); one trial started within 1 DOF and is in neither group
    images = np.array([2, 3, 5, 4, 1])
    within = np.array([True, True, True, True, True])
    side_right = np.array([1.0, 1.0, 1.0, 0.0, np.nan])
    line = by_first_side(images, within, side_right)
    assert "wrong side of focus in 1 of the 4 trials" in line and "67% of those it read right, 0% of these" in line
    assert "in 0 of the 0 trials" in by_first_side(images[-1:], within[-1:], side_right[-1:])

    estimate = FocusEstimate(defocus_um=-30.0, status="ok", distance_um=30.0, p_positive=0.1, spread_um=1.0,
                             tiles_used=9, tiles_total=9)
    result = FocusResult(converged=True, images=1, estimates=[estimate])
    assert first_side_right(result, start_um=-40.0, dof_um=8.0) == 1.0
    assert first_side_right(result, start_um=40.0, dof_um=8.0) == 0.0
    assert np.isnan(first_side_right(result, start_um=5.0, dof_um=8.0))  # within 1 DOF: a coin flip
    assert np.isnan(first_side_right(FocusResult(converged=False, images=0), start_um=40.0, dof_um=8.0))
