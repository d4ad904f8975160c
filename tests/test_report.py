"""report.py: learning curves with their unit and the mean predictor's line."""
import pytest


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
