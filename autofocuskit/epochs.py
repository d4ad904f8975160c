"""One step and one epoch of training or validation, for both tasks and both heads: batches
onto the device (scaling, augmentation, memory layout), mixed precision, the loss.

    train_loss = train_epoch(model, train_loader, DefocusLoss(), optimizer, device, epoch)
    val_loss = validation_epoch(model, val_loader, DefocusLoss(), device)

Both return the mean loss per image; pass an EpochTotals to also get the distance error
and the side accuracy. myTrain.py wires them into a run; bench.py times them.
"""
import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .cli import UserError
from .networks import HeadOutputs
from .processes import STOP, progress, rank_and_world_size, sum_over_processes

SYNC_EVERY = 20  # batches between reads of the running loss: each read makes the CPU wait for the GPU


@dataclass
class StepOptions:
    """How each forward pass runs. The defaults are plain fp32; `step_options` picks the fast ones."""

    amp_dtype: torch.dtype | None = None  # autocast to this dtype; None: fp32
    channels_last: bool = False  # NHWC images, as the model's weights are then laid out
    # enabled for fp16 only, where it keeps small gradients from vanishing; disabled it passes
    # the loss and the step through unchanged, so the step has one path whatever the precision
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))


def step_options(args, device: torch.device) -> StepOptions:
    """Resolve --amp for the device; bf16 is no faster than fp32 for training on CPUs, even with AMX."""
    amp = args.amp
    if amp == "auto":
        amp = "off" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return StepOptions(amp_dtype, args.channels_last, scaler)


def autocast(device: torch.device, options: StepOptions):
    """Mixed precision as the options say; a no-op context for fp32."""
    return torch.autocast(device.type, dtype=options.amp_dtype, enabled=options.amp_dtype is not None)


def split_batch(batch, device: torch.device, options: StepOptions = StepOptions(), augment: bool = False):
    """(model inputs, target) of a batch on the device: (image,) for SOAF, (image, params) for MOAF.

    uint8 images are scaled to [0, 1] floats here, after the copy; `augment` applies augment_batch.
    """
    image, *rest = (tensor.to(device, non_blocking=True) for tensor in batch)
    if image.dtype == torch.uint8:
        image = image.float().div_(255)
    if augment:
        image = augment_batch(image)
    if options.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    *params, target = rest
    return [image, *params], target


def augment_batch(images: torch.Tensor) -> torch.Tensor:
    """Augmentations that keep the defocus label true, per image, on the batch's device (cheap
    even on the CPU, nothing for the loader processes to do).

    Mirrorings and quarter turns (a flip of each axis and a transpose give all eight) and
    brightness and contrast changes of up to 10% (lamp and stain differences between slides)
    leave the blur as it was. Anything that blurs, sharpens or rescales the image would
    change the defocus it shows, so none of that is used. Needs square images.
    """
    count, device = images.shape[0], images.device

    def chosen() -> torch.Tensor:  # which images of the batch get a transformation
        return torch.rand(count, 1, 1, 1, device=device) < 0.5

    images = torch.where(chosen(), images.flip(-1), images)
    images = torch.where(chosen(), images.flip(-2), images)
    images = torch.where(chosen(), images.transpose(-1, -2), images)
    gain = torch.empty(count, 1, 1, 1, device=device).uniform_(0.9, 1.1)
    contrast = torch.empty(count, 1, 1, 1, device=device).uniform_(0.9, 1.1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (((images - mean) * contrast + mean) * gain).clamp_(0, 1)


def check_stop(batch_index: int | None = None) -> None:
    """Between batches: raise processes.RunStopped if a stop signal came. Under torchrun only at
    training batches that every process reaches together (every SYNC_EVERY-th), where the check
    is collective; validation batches differ in number between processes."""
    if rank_and_world_size()[1] == 1 or (batch_index is not None and batch_index % SYNC_EVERY == 0):
        STOP.check()


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; training stops before anything is saved."""


class DefocusLoss(nn.Module):
    """The training loss, in the target's unit (um for soaf, DOF for moaf), for either head.

    Signed head: L1 between the signed regression (the prediction) and the label.
    Split head: L1 between the distance and |label| (a well-posed regression: blur shows it
    on both sides of focus) plus the signed head's L1 between the signed regression and
    the label, so the side gets exactly the push the signed head gives it. The side's
    probability takes no gradient: it is calibrated on the validation set (fit_side_logistic),
    since a cross-entropy term on the side loses weak cues the signed L1 finds (docs/split_head.md).
    """

    def __init__(self, head: str = "signed"):
        super().__init__()
        self.head = head

    def forward(self, outputs: HeadOutputs, target: torch.Tensor) -> torch.Tensor:
        target = target.view(-1, 1)
        if self.head == "signed":
            return nn.functional.l1_loss(outputs.regression, target)
        return nn.functional.l1_loss(outputs.distance, target.abs()) + nn.functional.l1_loss(outputs.regression, target)


def forward_batch(model: nn.Module, batch, criterion, device: torch.device,
                  options: StepOptions = StepOptions(), augment: bool = False):
    """(loss, outputs, target) of one batch: the loss in fp32 whatever the autocast dtype (the
    model's outputs are fp32), the detached HeadOutputs and the target (N,1)."""
    inputs, target = split_batch(batch, device, options, augment)
    with autocast(device, options):
        outputs = model(*inputs, all_outputs=True)
    target = target.view(-1, 1)
    return criterion(outputs, target), HeadOutputs(*(output.detach() for output in outputs)), target


class EpochTotals:
    """Sums over an epoch's batches for the mean loss, the signed and distance MAE and the side accuracy.

    Side accuracy counts images more than `one_dof` (one depth of field in the target's
    unit) from focus, where the side matters to a focus loop; every image off focus when
    `one_dof` is None. Sums stay on the device: reading them once per epoch keeps the GPU
    from waiting on the CPU at every step.
    """

    def __init__(self, one_dof: float | None = None):
        self.one_dof = one_dof
        self.sums = None  # loss x images, images, |signed error|, |distance error|, right sides, judged sides

    def add(self, loss: torch.Tensor, outputs: HeadOutputs, target: torch.Tensor) -> None:
        signed, distance = outputs.defocus.view(-1), outputs.distance.view(-1)
        above = signed > 0
        target = target.view(-1)
        judged = target.abs() > (self.one_dof or 0.0)
        sums = torch.stack([loss.detach().float() * target.numel(), torch.tensor(float(target.numel()), device=target.device),
                            (signed - target).abs().sum(), (distance - target.abs()).abs().sum(),
                            (judged & (above == (target > 0))).sum().float(), judged.sum().float()])
        self.sums = sums if self.sums is None else self.sums + sums

    def means(self) -> dict:
        """{"loss", "signed_mae", "distance_mae", "side_accuracy"}, summed over every torchrun process."""
        loss_sum, count, signed_error, distance_error, right, judged = sum_over_processes(self.sums).tolist()
        return {"loss": loss_sum / count, "signed_mae": signed_error / count, "distance_mae": distance_error / count,
                "side_accuracy": right / judged if judged else math.nan}


def train_epoch(model, loader, criterion, optimizer, device, epoch: int | None = None,
                options: StepOptions = StepOptions(), augment: bool = True, totals: EpochTotals | None = None) -> float:
    """One pass over the training set, with augment_batch unless `augment` is False; returns the
    mean loss per image. `totals` collects the distance and side errors as well.

    The loss is read every SYNC_EVERY batches, not at every step: a non-finite loss stops
    training at the next read, before anything of this epoch is saved.
    """
    model.train()
    totals = totals or EpochTotals()
    bar = progress(loader, f"train {epoch}")
    start_time, last_read = time.perf_counter(), -1
    for batch_index, batch in enumerate(bar):
        check_stop(batch_index)
        loss, outputs, target = forward_batch(model, batch, criterion, device, options, augment)
        optimizer.zero_grad(set_to_none=True)
        options.scaler.scale(loss).backward()
        options.scaler.step(optimizer)
        options.scaler.update()
        totals.add(loss, outputs, target)
        if (batch_index + 1) % SYNC_EVERY == 0:
            check_and_show(totals, bar, start_time, epoch, last_read + 1, batch_index)
            last_read = batch_index
    check_and_show(totals, bar, start_time, epoch, last_read + 1, batch_index)
    return totals.means()["loss"]


def check_and_show(totals: EpochTotals, bar, start_time: float, epoch, first_batch: int, last_batch: int) -> None:
    """Stop on a non-finite running loss; show the running loss and speed on the progress bar."""
    loss_sum, count = totals.sums[:2].tolist()
    if not math.isfinite(loss_sum):
        batches = f"batch {last_batch}" if first_batch == last_batch else f"batches {first_batch}-{last_batch}"
        raise NonFiniteLossError(
            f"training loss is {loss_sum} at epoch {epoch}, {batches}; nothing was saved for this epoch, "
            "the checkpoints before it are intact (a lower --lr usually helps)")
    bar.set_postfix(loss=f"{loss_sum / count:.4f}", img_s=f"{count / (time.perf_counter() - start_time):.1f}")


@torch.no_grad()
def reestimate_batchnorm(model, loader, device, max_batches: int, options: StepOptions = StepOptions()) -> None:
    """Recompute BatchNorm statistics as a plain average over training batches at the current weights.

    The running averages trail the weights by many steps; while the weights still change
    fast (training from scratch), evaluating with them gives validation losses that jump
    far above the training loss. Recomputed statistics make validation, the saved
    checkpoints and the ONNX export use statistics that fit the weights. Under torchrun
    every process averages over its own batches, then the processes average their results.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if max_batches <= 0 or not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None: cumulative average over the batches seen
    model.train()
    for batch_index, batch in enumerate(loader):
        if batch_index == max_batches:
            break
        check_stop()
        inputs, _target = split_batch(batch, device, options)
        with autocast(device, options):
            model(*inputs)
    world_size = rank_and_world_size()[1]
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        if world_size > 1:
            for statistic in (norm.running_mean, norm.running_var):
                dist.all_reduce(statistic)
                statistic /= world_size


@torch.no_grad()
def fit_side_logistic(model, loader, device, one_dof: float, options: StepOptions = StepOptions(),
                   iterations: int = 25, ridge: float = 1.0) -> tuple[float, float]:
    """Fit the split head's side probability, p = sigmoid(a * signed / target_scale + b), to the
    images of `loader` (the validation set) and store a and b in the model; returns (a, b).

    Platt scaling: a weighted logistic regression by Newton's method, each image weighted by
    min(1, |label| / one_dof) (near focus the side neither shows nor matters), with a ridge
    penalty that pulls a and b toward 0, that is toward p = 0.5, when the images say little.
    Under torchrun the sums are added over every process's share of the images.
    """
    model.eval()
    scaled, positive, weight = [], [], []
    for batch in loader:
        check_stop()
        inputs, target = split_batch(batch, device, options)
        with autocast(device, options):
            regression = model(*inputs, all_outputs=True).regression.view(-1)
        scaled.append((regression - model.target_center) / model.target_scale)
        target = target.view(-1).float()
        positive.append((target > 0).float())
        weight.append((target.abs() / one_dof).clamp(max=1.0))
    z, y, w = (torch.cat(values).double() for values in (scaled, positive, weight))
    a, b = 0.0, 0.0
    for _ in range(iterations):
        p = torch.sigmoid(a * z + b)
        residual, curvature = w * (p - y), w * p * (1 - p)
        sums = sum_over_processes(torch.stack([(residual * z).sum(), residual.sum(), (curvature * z * z).sum(),
                                               (curvature * z).sum(), curvature.sum()]))
        gradient = torch.tensor([sums[0] + ridge * a, sums[1] + ridge * b], dtype=torch.float64)
        hessian = torch.tensor([[sums[2] + ridge, sums[3]], [sums[3], sums[4] + ridge]], dtype=torch.float64)
        a, b = (torch.tensor([a, b], dtype=torch.float64) - torch.linalg.solve(hessian, gradient)).tolist()
    model.side_scale.fill_(a)
    model.side_bias.fill_(b)
    return a, b


@torch.no_grad()
def validation_epoch(model, loader, criterion, device, options: StepOptions = StepOptions(),
                     totals: EpochTotals | None = None) -> float:
    """One pass over the validation set; returns the mean loss per image. `totals` collects the
    distance and side errors as well."""
    model.eval()
    totals = totals or EpochTotals()
    for batch in progress(loader, "validate"):
        check_stop()
        totals.add(*forward_batch(model, batch, criterion, device, options))
    return totals.means()["loss"]
