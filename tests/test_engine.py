"""engine.py: the loss of both heads, the epoch totals, non-finite losses, BatchNorm recalibration."""
import math

import pytest
import torch
from torch import nn

from engine import DefocusLoss, EpochTotals, NonFiniteLossError, recalibrate_batchnorm, train_epoch


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
