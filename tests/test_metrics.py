"""metrics.py: the per-objective metrics, confidence metrics and distance MAE, by hand."""
import pandas as pd
import pytest

from autofocuskit.metrics import confidence_metrics, error_metrics


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
    assert metrics["side_accuracy"] == pytest.approx(1.0)  # only |label| > 1 DOF is judged
    # the same in micrometres, as SOAF predicts them
    in_um = results.assign(label=results["label"] * 8, pt_pred=[-12.0, 4.0], onnx_pred=[-12.0, 4.0])
    metrics = error_metrics(in_um, unit="um")
    assert metrics["mae"] == pytest.approx((28 + 8) / 2) and "mae_um" not in metrics
    assert metrics["mae_dof"] == pytest.approx((3.5 + 1) / 2)
    assert metrics["within_1_dof"] == pytest.approx(0.5)
    assert metrics["side_accuracy"] == pytest.approx(0.0)


def test_confidence_metrics_by_hand():
    results = pd.DataFrame({"label": [16.0, -16.0, 16.0, 4.0], "pt_p_positive": [0.95, 0.95, 0.6, 0.99],
                            "dof_um": [8.0] * 4})
    metrics = confidence_metrics(results, "um")
    assert metrics["confident_share"] == pytest.approx(3 / 4)
    assert metrics["confident_side_accuracy"] == pytest.approx(1 / 2)  # the 4 um image is within 1 DOF


def test_distance_mae_ignores_the_side():
    results = pd.DataFrame({"label": [2.0, -3.0], "pt_pred": [-2.0, 2.5], "onnx_pred": [-2.0, 2.5],
                            "onnx_time_cost": [1.0, 1.0]})
    metrics = error_metrics(results, "DOF")
    assert metrics["distance_mae"] == pytest.approx(0.25) and metrics["mae"] == pytest.approx(4.75)
