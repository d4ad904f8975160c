"""The split head: distance and side of focus as two outputs, its loss, its metrics, its ONNX
outputs, and training and testing with it end to end."""
import json
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from checkpoints import find_best_checkpoint
from conftest import FAST, run_script
from myModel import MOAFModel, SOAFModel, export_onnx
from myTrain import training_labels


@pytest.fixture(scope="module")
def split_model() -> SOAFModel:
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False, head="split").eval()
    model.set_target_scale(torch.tensor([-20.0, -5.0, 5.0, 20.0]))
    return model


def test_split_head_ends_in_two_outputs(split_model):
    linear_layers = [layer for layer in split_model.fc if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear_layers] == [(960, 256), (256, 128), (128, 2)]


def test_signed_prediction_is_the_distance_on_the_likelier_side(split_model):
    torch.manual_seed(1)
    images = torch.rand(6, 3, 224, 224)
    with torch.no_grad():
        signed, distance, p_positive = split_model.all_outputs(images)
        torch.testing.assert_close(split_model(images), signed)
    assert signed.shape == distance.shape == p_positive.shape == (6, 1)
    assert (distance >= 0).all() and ((p_positive > 0) & (p_positive < 1)).all()
    torch.testing.assert_close(signed, torch.where(p_positive >= 0.5, distance, -distance))


def test_signed_head_parts_are_its_prediction():
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False).eval()
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(images, parts=True), model(images))
        assert len(model.all_outputs(images)) == 1


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="head must be one of"):
        SOAFModel(pretrained=False, head="double")


@pytest.mark.parametrize("model_class", [SOAFModel, MOAFModel])
def test_split_head_onnx_has_three_named_outputs_matching_pytorch(model_class, tmp_path):
    torch.manual_seed(0)
    model = model_class(pretrained=False, head="split").eval()
    model.set_target_scale(torch.tensor([-3.0, 0.0, 3.0]))
    path = export_onnx(model, tmp_path / "split.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["output", "distance", "p_positive"]
    inputs = model.example_inputs(3)
    with torch.no_grad():
        expected = [tensor.numpy() for tensor in model.all_outputs(*inputs)]
    got = session.run(None, {name: tensor.numpy() for name, tensor in zip(model.input_names, inputs)})
    for ours, theirs in zip(got, expected):
        assert ours.shape == (3, 1)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_one_sided_labels_are_warned_about(capsys):
    def split_with_labels(*labels):
        return SimpleNamespace(frame=pd.DataFrame({"defocus_label": labels}), target_column="defocus_label")

    assert training_labels(split_with_labels(0.5, 2.0, 3.0)).tolist() == [0.5, 2.0, 3.0]
    assert "same sign" in capsys.readouterr().err
    training_labels(split_with_labels(-0.5, 2.0))
    assert capsys.readouterr().err == ""


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
    assert {"distance_mae", "confident_share", "confident_sign_accuracy"} <= set(metrics["all"])


def test_resuming_with_the_other_head_is_refused_and_overwrites_nothing(demo_root, tmp_path):
    assert run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "1", *FAST, cwd=tmp_path).returncode == 0
    before = {path.name: path.stat().st_mtime_ns for path in (tmp_path / ".ckpts").iterdir()}
    split = run_script("myTrain.py", "--root_dir", demo_root, "--head", "split", "--epochs", "2", *FAST, cwd=tmp_path)
    assert split.returncode != 0 and "Traceback" not in split.stderr
    assert "trained with --head signed, not split" in split.stderr
    assert {path.name: path.stat().st_mtime_ns for path in (tmp_path / ".ckpts").iterdir()} == before
