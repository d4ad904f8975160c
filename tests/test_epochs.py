"""epochs.py: the loss of both heads by hand and what it pushes, the side calibration where the side is
known and where it is not, the epoch totals, non-finite losses, BatchNorm recalibration; the step options
(channels_last, bf16, fp16 with its scaler) against fp32, and the augmentation."""
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from autofocuskit.datasets import SOAFDataset
from autofocuskit.epochs import (
    DefocusLoss,
    EpochTotals,
    NonFiniteLossError,
    StepOptions,
    augment_batch,
    fit_side_logistic,
    reestimate_batchnorm,
    train_epoch,
    validation_epoch,
)
from autofocuskit.networks import HeadOutputs, SOAFModel
from autofocuskit.tasks import build_loader


def head_outputs(defocus, distance, p_positive, regression) -> HeadOutputs:
    """HeadOutputs of (N,1) columns from per-image values."""
    return HeadOutputs(*(torch.tensor(values, dtype=torch.float32).view(-1, 1)
                         for values in (defocus, distance, p_positive, regression)))


def signed_head_outputs(defocus) -> HeadOutputs:
    defocus = torch.tensor(defocus).view(-1, 1)
    return HeadOutputs(defocus, defocus.abs(), (defocus > 0).float(), defocus)


def test_signed_loss_is_the_l1_loss():
    outputs, target = signed_head_outputs([1.0, -2.0]), torch.tensor([3.0, -1.0])
    assert DefocusLoss("signed")(outputs, target).item() == pytest.approx(1.5)


def test_split_loss_by_hand():
    # distance errors 1 and 0, signed-regression errors 2 and 1
    outputs = head_outputs([2.0, -4.0], [2.0, 4.0], [0.6, 0.1], [1.0, -3.0])
    target = torch.tensor([3.0, -4.0])
    assert DefocusLoss("split")(outputs, target).item() == pytest.approx((1 + 0) / 2 + (2 + 1) / 2)


def test_split_loss_gives_the_signed_regression_the_signed_heads_push_and_the_side_none():
    parts = [torch.tensor([[value]], requires_grad=True) for value in (5.0, 5.0, 0.5, -2.0)]  # regression wrong side
    DefocusLoss("split")(HeadOutputs(*parts), torch.tensor([5.0])).backward()
    signed_head = torch.tensor([[-2.0]], requires_grad=True)
    DefocusLoss("signed")(HeadOutputs(signed_head, signed_head.abs(), signed_head, signed_head),
                          torch.tensor([5.0])).backward()
    defocus, distance, p_positive, regression = parts
    assert distance.grad.item() == 0.0  # the distance is exact: no push
    assert defocus.grad is None and p_positive.grad is None
    assert regression.grad.item() == signed_head.grad.item()


class FixedSignedRegression(nn.Module):
    """A split head whose signed regression is the input itself, to calibrate by hand."""

    def __init__(self):
        super().__init__()
        for name, value in (("target_center", 0.0), ("target_scale", 2.0), ("side_scale", 1.0), ("side_bias", 0.0)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, signed, all_outputs=True):
        return HeadOutputs(signed, signed.abs(), torch.full_like(signed, 0.5), signed)


def test_side_calibration_is_confident_where_the_signed_regression_knows_the_side():
    labels = torch.linspace(-10, 10, 40)
    model = FixedSignedRegression()
    a, b = fit_side_logistic(model, [(labels.view(-1, 1), labels)], torch.device("cpu"), one_dof=1.0)
    assert a > 1 and abs(b) < 0.5
    p_far = torch.sigmoid(model.side_scale * 8.0 / model.target_scale + model.side_bias)
    assert p_far > 0.99


def test_side_calibration_stays_near_even_where_the_signed_regression_does_not_know():
    labels = torch.linspace(-10, 10, 40)
    guesses = torch.where(torch.arange(40) % 2 == 0, 3.0, -3.0)  # half right, half wrong, at every distance
    a, b = fit_side_logistic(FixedSignedRegression(), [(guesses.view(-1, 1), labels)], torch.device("cpu"), one_dof=1.0)
    assert abs(a) < 0.2 and abs(b) < 0.2  # p within a few per cent of 0.5


def test_epoch_totals_count_distance_and_side_beyond_one_dof():
    totals = EpochTotals(one_dof=1.0)
    outputs = head_outputs([2.0, -1.0, 0.5], [2.0, 1.0, 0.5], [0.7, 0.2, 0.9], [0.0, 0.0, 0.0])  # sides +, -, +
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

    def forward(self, images, all_outputs=False):
        defocus = self.scale * images.mean(dim=(1, 2, 3)).view(-1, 1) * float("inf")
        return HeadOutputs(defocus, defocus.abs(), (defocus > 0).float(), defocus)


def test_non_finite_loss_stops_training():
    model = ExplodingModel()
    loader = [(torch.rand(4, 3, 8, 8), torch.zeros(4))]
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(NonFiniteLossError, match="epoch 3, batch 0; nothing was saved for this epoch"):
        train_epoch(model, loader, DefocusLoss(), optimizer, torch.device("cpu"), epoch=3)


def test_non_finite_loss_names_the_batches_since_the_last_read():
    loader = [(torch.rand(2, 3, 8, 8), torch.zeros(2))] * 25  # read after batch 19, then at the end
    optimizer = torch.optim.Adam(ExplodingModel().parameters())
    with pytest.raises(NonFiniteLossError, match="batches 0-19"):
        train_epoch(ExplodingModel(), loader, DefocusLoss(), optimizer, torch.device("cpu"), epoch=0)


def test_batchnorm_recalibration_uses_current_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model[1].running_mean.fill_(-100.0)  # stale, as after fast-changing weights
    batches = [(torch.randn(8, 3) + 5.0, torch.zeros(8)) for _ in range(4)]
    reestimate_batchnorm(model, batches, torch.device("cpu"), max_batches=3)
    with torch.no_grad():
        expected = torch.stack([model[0](x).mean(0) for x, _ in batches[:3]]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected)
    assert model[1].momentum == 0.1  # restored for training
    before = model[1].running_mean.clone()
    reestimate_batchnorm(model, batches, torch.device("cpu"), max_batches=0)
    torch.testing.assert_close(model[1].running_mean, before)


def small_loader(demo_root):
    """One batch of 8 training images."""
    dataset = Subset(SOAFDataset(demo_root, "train"), range(8))
    return build_loader(dataset, batch_size=8, num_workers=0, device=torch.device("cpu"), shuffle=False)


def validate_then_train(demo_root, options: StepOptions) -> tuple[float, float]:
    """(validation loss at initialisation, loss of one training epoch), from the same start every time."""
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False)
    model.set_target_scale(torch.tensor([-20.0, 0.0, 20.0]))
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = small_loader(demo_root)
    val_loss = validation_epoch(model, loader, DefocusLoss(), torch.device("cpu"), options)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    train_loss = train_epoch(model, loader, DefocusLoss(), optimizer, torch.device("cpu"), 0, options)
    return val_loss, train_loss


@pytest.fixture(scope="module")
def fp32_losses(demo_root) -> tuple[float, float]:
    return validate_then_train(demo_root, StepOptions())


@pytest.mark.parametrize("options, tolerance", [
    (StepOptions(channels_last=True), 1e-4),
    (StepOptions(amp_dtype=torch.bfloat16), 0.05),
    (StepOptions(amp_dtype=torch.float16, scaler=torch.amp.GradScaler("cpu")), 0.05),
])
def test_step_options_agree_with_fp32(demo_root, fp32_losses, options, tolerance):
    fp32_val, fp32_train = fp32_losses
    option_val, option_train = validate_then_train(demo_root, options)
    assert option_val == pytest.approx(fp32_val, rel=tolerance)
    assert option_train == pytest.approx(fp32_train, rel=tolerance)


def dihedral_views(image: torch.Tensor) -> list[torch.Tensor]:
    """The eight rotations and mirrorings of a square (C, H, W) image."""
    views = []
    for turned in (image, image.transpose(-1, -2)):
        views += [turned, turned.flip(-1), turned.flip(-2), turned.flip(-1).flip(-2)]
    return views


def test_augmentation_only_turns_mirrors_and_rescales_intensity(demo_root):
    images = torch.stack([SOAFDataset(demo_root, "train")[index][0] for index in range(8)])
    torch.manual_seed(0)
    augmented = augment_batch(images)
    assert augmented.shape == images.shape and augmented.dtype == torch.float32
    assert 0.0 <= augmented.min() and augmented.max() <= 1.0
    turned = 0
    for image, result in zip(images, augmented):
        # brightness and contrast are affine in intensity: one view matches with correlation 1
        unclipped = (result > 0) & (result < 1)  # a brighter lamp saturates the camera: clamped to 1
        correlations = [torch.corrcoef(torch.stack([view[unclipped], result[unclipped]]))[0, 1]
                        for view in dihedral_views(image)]
        assert max(correlations) > 0.999
        turned += int(torch.argmax(torch.stack(correlations))) != 0
    assert turned >= 2  # most images are turned or mirrored (7 in 8 on average)
