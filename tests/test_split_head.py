"""The split head: distance and side of focus as two outputs, its loss, its metrics, its ONNX
outputs, and training and testing with it end to end."""
import json
import math

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from checkpoints import find_best_checkpoint
from conftest import run_script
from myModel import MOAFModel, SOAFModel, export_onnx
from myTrain import DefocusLoss, EpochTotals, warn_if_one_sided
from report import confidence_metrics, error_metrics

FAST = ("--no-pretrained", "--num_workers", "0", "--batch_size", "8", "--lr", "1e-4")


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


def test_signed_loss_is_the_l1_loss():
    outputs, target = torch.tensor([[1.0], [-2.0]]), torch.tensor([3.0, -1.0])
    assert DefocusLoss()(outputs, target).item() == pytest.approx(1.5)


def test_split_loss_by_hand():
    # distance errors 1 and 0; the side term weighs -log p(right side) by 2|label|
    outputs = torch.tensor([[2.0, math.log(3.0)], [4.0, 0.0]])  # p_positive 0.75 and 0.5
    target = torch.tensor([3.0, -4.0])
    expected = (1 + 0) / 2 + (6.0 * -math.log(0.75) + 8.0 * -math.log(0.5)) / 2
    assert DefocusLoss()(outputs, target).item() == pytest.approx(expected, rel=1e-6)


def test_split_loss_ignores_the_side_in_focus_and_pushes_it_far_from_focus():
    def side_gradient(label: float) -> float:
        outputs = torch.tensor([[abs(label), 0.0]], requires_grad=True)  # distance right, side unknown
        DefocusLoss()(outputs, torch.tensor([label])).backward()
        return outputs.grad[0, 1].item()

    assert side_gradient(0.0) == 0.0
    assert side_gradient(10.0) < side_gradient(1.0) < 0  # raises the logit of a positive label, more when far


def test_epoch_totals_count_distance_and_side_beyond_one_dof():
    totals = EpochTotals(one_dof=1.0)
    outputs = torch.tensor([[2.0, 1.0], [1.0, -1.0], [0.5, 1.0]])  # sides +, -, +
    target = torch.tensor([[3.0], [2.0], [-0.5]])  # the last is within 1 DOF: side not judged
    totals.add(torch.tensor(1.5), outputs, target)
    means = totals.means()
    assert means["loss"] == pytest.approx(1.5)
    assert means["distance_mae"] == pytest.approx((1 + 1 + 0) / 3)
    assert means["side_accuracy"] == pytest.approx(1 / 2)


def test_confidence_metrics_by_hand():
    results = pd.DataFrame({"label": [16.0, -16.0, 16.0, 4.0], "pt_p_positive": [0.95, 0.95, 0.6, 0.99],
                            "dof_um": [8.0] * 4})
    metrics = confidence_metrics(results, "um")
    assert metrics["confident_share"] == pytest.approx(3 / 4)
    assert metrics["confident_sign_accuracy"] == pytest.approx(1 / 2)  # the 4 um image is within 1 DOF


def test_distance_mae_ignores_the_side():
    results = pd.DataFrame({"label": [2.0, -3.0], "pt_pred": [-2.0, 2.5], "onnx_pred": [-2.0, 2.5],
                            "onnx_time_cost": [1.0, 1.0]})
    metrics = error_metrics(results, "DOF")
    assert metrics["distance_mae"] == pytest.approx(0.25) and metrics["mae"] == pytest.approx(4.75)


def test_one_sided_labels_are_warned_about(capsys):
    warn_if_one_sided(torch.tensor([0.5, 2.0, 3.0]))
    assert "same sign" in capsys.readouterr().err
    warn_if_one_sided(torch.tensor([-0.5, 2.0]))
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
    stem = find_best_checkpoint(tmp_path / ".ckpts").stem
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
