"""report.py: the test metrics by hand, for both heads and both units."""
import pandas as pd
import pytest

from report import confidence_metrics, depth_of_field_um, error_metrics


def test_error_metrics_by_hand():
    # two 10x/0.3 images with a DOF of 8 um, in DOF units as MOAF predicts them
    results = pd.DataFrame({"label": [2.0, -0.5], "pt_pred": [1.5, 0.5], "onnx_pred": [1.5, 0.5],
                            "dof_um": [8.0, 8.0], "onnx_time_cost": [2.0, 4.0]})
    metrics = error_metrics(results, unit="DOF", train_label_mean=1.0)
    assert metrics["mae"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2
    assert metrics["rmse"] == pytest.approx((0.625) ** 0.5)  # sqrt((0.25 + 1) / 2)
    assert metrics["median_ae"] == pytest.approx(0.75)
    assert metrics["r2"] == pytest.approx(1 - 1.25 / 3.125)  # labels' squared deviations: 1.5625 * 2
    assert metrics["mean_predictor_mae"] == pytest.approx(1.25)  # (1 + 1.5) / 2
    assert metrics["latency_median_ms"] == pytest.approx(3.0)
    assert metrics["mae_um"] == pytest.approx(6.0)  # (4 + 8) / 2
    assert metrics["within_1_dof"] == pytest.approx(1.0)  # 0.5 and 1.0 DOF off
    assert metrics["sign_accuracy"] == pytest.approx(1.0)  # only |label| > 1 DOF is judged
    # the same in micrometres, as SOAF predicts them
    in_um = results.assign(label=results["label"] * 8, pt_pred=[-12.0, 4.0], onnx_pred=[-12.0, 4.0])
    metrics = error_metrics(in_um, unit="um")
    assert metrics["mae_um"] == pytest.approx((28 + 8) / 2)
    assert metrics["mae_dof"] == pytest.approx((3.5 + 1) / 2)
    assert metrics["within_1_dof"] == pytest.approx(0.5)
    assert metrics["sign_accuracy"] == pytest.approx(0.0)


def test_depth_of_field_comes_from_the_csv_ratio():
    frame = pd.DataFrame({"defocus_label": [16.0, 0.0, -3.2], "defocus_dof_label": [2.0, 0.0, -2.0],
                          "magnification": [10.0, 10.0, 20.0], "NA": [0.3, 0.3, 0.7]})
    assert depth_of_field_um(frame).tolist() == pytest.approx([8.0, 8.0, 1.6])
    assert depth_of_field_um(frame.drop(columns="defocus_dof_label")) is None


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


def test_learning_curves_come_with_their_unit_and_the_mean_predictor(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from report import learning_curves, plot_learning_curves

    with SummaryWriter(tmp_path / "moaf") as writer:
        writer.add_text("config", '```\n{"args": {"task": "moaf"}}\n```', 0)
        for epoch, (train, val) in enumerate([(3.0, 2.5), (2.0, 1.5)]):
            writer.add_scalar("Signed MAE/train", train, epoch)
            writer.add_scalar("Signed MAE/val", val, epoch)
            writer.add_scalar("Signed MAE/val_mean_predictor", 2.75, epoch)
    curves = learning_curves(tmp_path / "moaf")
    assert curves["unit"] == "DOF" and curves["mean_predictor"] == pytest.approx(2.75)
    assert curves["val"] == ([0, 1], [pytest.approx(2.5), pytest.approx(1.5)])  # epochs from 0, as in file names
    assert plot_learning_curves([tmp_path / "moaf"], tmp_path / "curves.png").stat().st_size > 0
