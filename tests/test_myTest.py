"""myTest.py: train-then-test runs of both tasks and both heads: result CSV, metrics, plots, ONNX files, and
the checkpoint's glob reused."""
import json

import numpy as np
import onnxruntime
import pandas as pd
import pytest
from conftest import FAST, run_script, scalar_steps
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from autofocuskit.checkpoints import find_best_checkpoint
from autofocuskit.datasets import field_key
from autofocuskit.error_model import ErrorModel


@pytest.mark.slow
def test_train_then_test_end_to_end(demo_root, tmp_path):
    trained = run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "2", *FAST, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "Epoch 1 (2/2)" in trained.stdout
    checkpoints = sorted(p.name for p in (tmp_path / ".ckpts").iterdir())
    assert "ckpt_0000.pt" in checkpoints and "ckpt_0001.pt" not in checkpoints
    assert len([c for c in checkpoints if c.startswith("ckpt_best_")]) == 1
    for tag in ("Loss/train", "Loss/val", "Learning Rate"):
        assert scalar_steps(tmp_path / "runs" / "soaf", tag) == [0, 1]

    tested = run_script("myTest.py", "--root_dir", demo_root, "--num_workers", "0", "--batch_size", "5",
                        cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    best = find_best_checkpoint(tmp_path / ".ckpts")
    result_file = tmp_path / ".result" / f"ckpts-{best.stem}_test.csv"
    assert tested.stdout.strip().endswith(f"Results: {result_file.relative_to(tmp_path)}")
    onnx_file = tmp_path / ".onnx" / f"ckpts-{best.stem}.onnx"
    metadata = onnxruntime.InferenceSession(str(onnx_file)).get_modelmeta().custom_metadata_map
    error_model = ErrorModel.from_metadata(metadata["error_model"])  # measured on the validation and test splits
    held_out = [pd.read_csv(f) for split in (".val", ".test") for f in (demo_root / split).glob("10x_0.3*.csv")]
    assert error_model.validation_images == len(pd.concat(held_out))
    assert error_model.validation_fields == sum(frame["image_path"].map(field_key).nunique() for frame in held_out)
    # the held-out fields' sharpness curve, about a DOF wide (8.28 um at 10x/0.3)
    assert 0.4 * 8.28 < error_model.sharpness_curve().width_um < 2.5 * 8.28
    assert "Error model (measured on the val and test splits" in tested.stdout
    assert (tmp_path / ".result" / f"ckpts-{best.stem}_error_model.png").is_file()
    assert json.loads(metadata["pixel_size_um"]) == {"10x/0.3": pytest.approx(0.65)}
    assert metadata["camera_pixel_um"] == "6.5"
    results = pd.read_csv(result_file)
    assert list(results.columns[:5]) == ["image_path", "label", "pt_pred", "onnx_pred", "onnx_time_cost"]
    expected = pd.concat([pd.read_csv(f) for f in sorted((demo_root / ".test").glob("10x_0.3*.csv"))])
    assert results["image_path"].tolist() == expected["image_path"].tolist()
    assert results["label"].to_numpy() == pytest.approx(expected["defocus_label"].to_numpy(), abs=1e-4)
    assert (results["pt_pred"] - results["onnx_pred"]).abs().max() < 1e-3
    assert (results["onnx_time_cost"] > 0).all()


@pytest.mark.slow
def test_glob_selects_the_objective_and_test_reuses_it(demo_root, tmp_path):
    trained = run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "1", "--glob", "20x_0.7*.csv",
                         *FAST, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    tested = run_script("myTest.py", "--root_dir", demo_root, "--num_workers", "0", "--error_model_splits", "val",
                        cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    results = pd.read_csv(next((tmp_path / ".result").glob("*.csv")))
    assert results["image_path"].str.startswith("images/20x_0.7/").all()
    metadata = onnxruntime.InferenceSession(str(next((tmp_path / ".onnx").glob("*.onnx")))).get_modelmeta()
    error_model = ErrorModel.from_metadata(metadata.custom_metadata_map["error_model"])
    assert error_model.validation_images == len(pd.concat(pd.read_csv(f) for f in (demo_root / ".val").glob("20x_0.7*.csv")))
    assert "Error model (measured on the val split," in tested.stdout


@pytest.mark.slow
def test_moaf_train_then_test(demo_root, tmp_path):
    trained = run_script("myTrain.py", "--root_dir", demo_root, "--task", "moaf", "--epochs", "1", *FAST,
                         cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "Task moaf: 32 training and 16 validation images" in trained.stdout
    assert scalar_steps(tmp_path / "runs" / "moaf") == [0]

    tested = run_script("myTest.py", "--root_dir", demo_root, "--num_workers", "0", "--quantize",
                        "--calibration_images", "8", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert "task moaf" in tested.stdout
    stem = "ckpts-" + find_best_checkpoint(tmp_path / ".ckpts").stem
    results = pd.read_csv(tmp_path / ".result" / f"{stem}_test.csv")
    expected = pd.concat([pd.read_csv(f) for f in sorted((demo_root / ".test").glob("*.csv"))])
    assert list(results.columns) == ["image_path", "label", "pt_pred", "onnx_pred", "onnx_time_cost",
                                     "magnification", "NA", "dof_um", "int8_pred", "int8_time_cost"]
    assert (tmp_path / ".onnx" / f"{stem}_int8.onnx").is_file()
    assert "calibrated on 8 training images" in tested.stdout and "fp32 vs int8 ONNX: MAE" in tested.stdout
    assert results["label"].to_numpy() == pytest.approx(expected["defocus_dof_label"].to_numpy(), abs=1e-5)
    assert set(results["magnification"]) == {10.0, 20.0}
    assert (results["pt_pred"] - results["onnx_pred"]).abs().max() < 1e-3
    for plot in ("pred_vs_true", "error_vs_true", "latency"):
        with Image.open(tmp_path / ".result" / f"{stem}_{plot}.png") as picture:
            assert picture.format == "PNG" and picture.width > 500
    assert "\r" not in tested.stderr + trained.stderr  # no progress bars when the output is no terminal

    metrics = json.loads((tmp_path / ".result" / f"{stem}_metrics.json").read_text())
    assert metrics["task"] == "moaf" and set(metrics["objectives"]) == {"10x/0.3", "20x/0.7", "all"}
    for objective, (magnification, na) in {"10x/0.3": (10, 0.3), "20x/0.7": (20, 0.7)}.items():
        group = results[(results["magnification"] == magnification) & (results["NA"] == na)]
        error_dof = (group["pt_pred"] - group["label"]).abs()
        assert metrics["objectives"][objective]["mae"] == pytest.approx(error_dof.mean(), rel=1e-5)
        assert metrics["objectives"][objective]["mae_um"] == pytest.approx(
            (error_dof * group["dof_um"]).mean(), rel=1e-5)
        assert objective in tested.stdout
    train_mean = pd.concat([pd.read_csv(f) for f in (demo_root / ".train").glob("*.csv")])["defocus_dof_label"].mean()
    assert metrics["objectives"]["all"]["mean_predictor_mae"] == pytest.approx(
        (results["label"] - train_mean).abs().mean(), rel=1e-5)


@pytest.mark.slow
def test_train_and_test_with_the_split_head(demo_root, tmp_path):
    trained = run_script("myTrain.py", "--root_dir", demo_root, "--task", "moaf", "--head", "split", "--epochs", "1",
                         *FAST, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    accumulator = EventAccumulator(str(tmp_path / "runs" / "moaf"))
    accumulator.Reload()
    for tag in ("Loss/train", "Loss/val", "Distance MAE/train", "Distance MAE/val", "Side accuracy/val"):
        assert [event.step for event in accumulator.Scalars(tag)] == [0], tag

    tested = run_script("myTest.py", "--root_dir", demo_root, "--num_workers", "0", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert "split head" in tested.stdout
    stem = "ckpts-" + find_best_checkpoint(tmp_path / ".ckpts").stem
    results = pd.read_csv(tmp_path / ".result" / f"{stem}_test.csv")
    for column in ("distance", "p_positive"):
        assert (results[f"pt_{column}"] - results[f"onnx_{column}"]).abs().max() < 1e-4
    signed = np.where(results["pt_p_positive"] >= 0.5, results["pt_distance"], -results["pt_distance"])
    np.testing.assert_allclose(results["pt_pred"], signed, atol=1e-5)
    metrics = json.loads((tmp_path / ".result" / f"{stem}_metrics.json").read_text())["objectives"]
    assert {"distance_mae", "confident_share", "confident_side_accuracy"} <= set(metrics["all"])
