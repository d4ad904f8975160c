"""engine.py: the loss of both heads, the side calibration, the epoch totals, non-finite losses, BatchNorm
recalibration."""
import math

import pytest
import torch
from torch import nn

from engine import DefocusLoss, EpochTotals, NonFiniteLossError, calibrate_side, recalibrate_batchnorm, train_epoch


def test_signed_loss_is_the_l1_loss():
    outputs, target = torch.tensor([[1.0], [-2.0]]), torch.tensor([3.0, -1.0])
    assert DefocusLoss()(outputs, target).item() == pytest.approx(1.5)


def test_split_loss_by_hand():
    # [distance, side logit, signed regression]: distance errors 1 and 0, signed errors 2 and 1
    outputs = torch.tensor([[2.0, 0.3, 1.0], [4.0, -5.0, -3.0]])
    target = torch.tensor([3.0, -4.0])
    assert DefocusLoss()(outputs, target).item() == pytest.approx((1 + 0) / 2 + (2 + 1) / 2)


def test_split_loss_gives_the_signed_regression_the_signed_heads_push_and_the_logit_none():
    outputs = torch.tensor([[5.0, 0.0, -2.0]], requires_grad=True)  # the signed regression on the wrong side
    DefocusLoss()(outputs, torch.tensor([5.0])).backward()
    signed_head = torch.tensor([[-2.0]], requires_grad=True)
    DefocusLoss()(signed_head, torch.tensor([5.0])).backward()
    assert outputs.grad[0].tolist() == [0.0, 0.0, signed_head.grad.item()]  # distance exact: no push


class FixedSignedRegression(nn.Module):
    """A split head whose signed regression is the input itself, to calibrate by hand."""

    def __init__(self):
        super().__init__()
        for name, value in (("target_center", 0.0), ("target_scale", 2.0), ("side_scale", 1.0), ("side_bias", 0.0)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, signed, parts=True):
        return torch.cat([signed.abs(), torch.zeros_like(signed), signed], dim=1)


def test_side_calibration_is_confident_where_the_signed_regression_knows_the_side():
    labels = torch.linspace(-10, 10, 40)
    model = FixedSignedRegression()
    a, b = calibrate_side(model, [(labels.view(-1, 1), labels)], torch.device("cpu"), one_dof=1.0)
    assert a > 1 and abs(b) < 0.5
    p_far = torch.sigmoid(model.side_scale * 8.0 / model.target_scale + model.side_bias)
    assert p_far > 0.99


def test_side_calibration_stays_near_even_where_the_signed_regression_does_not_know():
    labels = torch.linspace(-10, 10, 40)
    guesses = torch.where(torch.arange(40) % 2 == 0, 3.0, -3.0)  # half right, half wrong, at every distance
    a, b = calibrate_side(FixedSignedRegression(), [(guesses.view(-1, 1), labels)], torch.device("cpu"), one_dof=1.0)
    assert abs(a) < 0.2 and abs(b) < 0.2  # p within a few per cent of 0.5


def test_epoch_totals_count_distance_and_side_beyond_one_dof():
    totals = EpochTotals(one_dof=1.0)
    outputs = torch.tensor([[2.0, 1.0], [1.0, -1.0], [0.5, 1.0]])  # sides +, -, +
    target = torch.tensor([[3.0], [2.0], [-0.5]])  # the last is within 1 DOF: side not judged
    totals.add(torch.tensor(1.5), outputs, target)
    means = totals.means()
    assert means["loss"] == pytest.approx(1.5)
    assert means["distance_mae"] == pytest.approx((1 + 1 + 0) / 3)
    assert means["side_accuracy"] == pytest.approx(1 / 2)


class ExplodingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, images, parts=False):
        return self.scale * images.mean(dim=(1, 2, 3)).view(-1, 1) * float("inf")


def test_non_finite_loss_stops_training():
    model = ExplodingModel()
    loader = [(torch.rand(4, 3, 8, 8), torch.zeros(4))]
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(NonFiniteLossError, match="epoch 3, batch 0; nothing was saved for this epoch"):
        train_epoch(model, loader, nn.L1Loss(), optimizer, torch.device("cpu"), epoch=3)


def test_non_finite_loss_names_the_batches_since_the_last_read():
    loader = [(torch.rand(2, 3, 8, 8), torch.zeros(2))] * 25  # read after batch 19, then at the end
    optimizer = torch.optim.Adam(ExplodingModel().parameters())
    with pytest.raises(NonFiniteLossError, match="batches 0-19"):
        train_epoch(ExplodingModel(), loader, nn.L1Loss(), optimizer, torch.device("cpu"), epoch=0)


def test_batchnorm_recalibration_uses_current_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model[1].running_mean.fill_(-100.0)  # stale, as after fast-changing weights
    batches = [(torch.randn(8, 3) + 5.0, torch.zeros(8)) for _ in range(4)]
    recalibrate_batchnorm(model, batches, torch.device("cpu"), max_batches=3)
    with torch.no_grad():
        expected = torch.stack([model[0](x).mean(0) for x, _ in batches[:3]]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected)
    assert model[1].momentum == 0.1  # restored for training
    before = model[1].running_mean.clone()
    recalibrate_batchnorm(model, batches, torch.device("cpu"), max_batches=0)
    torch.testing.assert_close(model[1].running_mean, before)
