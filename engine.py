"""One epoch of training or validation, for both tasks and both heads.

    train_loss = train_epoch(model, train_loader, DefocusLoss(), optimizer, device, epoch)
    val_loss = validation_epoch(model, val_loader, DefocusLoss(), device)

Both return the mean loss per image; pass an EpochTotals to also get the distance error
and the side accuracy. myTrain.py wires them into a run; bench.py times them.
"""
import math
import time

import torch
import torch.distributed as dist
from torch import nn

from common import StepOptions, autocast, progress, rank_and_world_size, split_batch, sum_over_processes

SYNC_EVERY = 20  # batches between reads of the running loss: each read makes the CPU wait for the GPU


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops before anything is saved."""


class DefocusLoss(nn.Module):
    """The training loss, in the target's unit (um for soaf, DOF for moaf), for either head.

    Signed head, outputs (N,1): L1 between prediction and label, as the user asked.
    Split head, outputs (N,2) = [distance, logit]: L1 between the distance and |label| (a
    well-posed regression: blur shows it on both sides of focus), plus the side's binary
    cross-entropy weighted by 2|label|, what a wrong side adds to the signed prediction's
    error. So the side counts little near focus, where it neither shows nor matters, and
    far from focus it gets about the push the signed head's L1 gives it. Measured on the
    demo data (10x/0.3, chromatic cue), a weight of |label| let the distance term drown the
    colour cue (side right for 65% against the signed head's 85%), 2|label| found it (85%)
    and 4|label| made the probabilities overconfident; an added L1 of the soft estimate
    distance x (2p - 1) did not find it either (65%).
    """

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.view(-1, 1)
        if outputs.shape[1] == 1:
            return nn.functional.l1_loss(outputs, target)
        distance, logit = outputs[:, :1], outputs[:, 1:]
        side = nn.functional.binary_cross_entropy_with_logits(logit, (target > 0).float(), reduction="none")
        return nn.functional.l1_loss(distance, target.abs()) + (2 * target.abs() * side).mean()


def distance_and_side(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) predicted distance from focus and (N,) whether the prediction lies above focus, for either head."""
    if outputs.shape[1] == 1:
        return outputs[:, 0].abs(), outputs[:, 0] > 0
    return outputs[:, 0], outputs[:, 1] >= 0


def forward_batch(model: nn.Module, batch, criterion, device: torch.device,
                  options: StepOptions = StepOptions(), augment: bool = False):
    """(loss, outputs, target) of one batch: the loss computed in fp32 whatever the autocast dtype,
    the head's detached outputs (N,1) or (N,2) and the target (N,1)."""
    inputs, target = split_batch(batch, device, options, augment)
    with autocast(device, options):
        outputs = model(*inputs, parts=True)  # (N, 1) or (N, 2)
    target = target.view(-1, 1)
    return criterion(outputs.float(), target), outputs.detach().float(), target


class EpochTotals:
    """Sums over an epoch's batches for the mean loss, the distance MAE and the side accuracy.

    Side accuracy counts images more than `one_dof` (one depth of field in the target's
    unit) from focus, where the side matters to a focus loop; every image off focus when
    `one_dof` is None. Sums stay on the device: reading them once per epoch keeps the GPU
    from waiting on the CPU at every step.
    """

    def __init__(self, one_dof: float | None = None):
        self.one_dof = one_dof
        self.sums = None  # loss x images, images, |distance error|, right sides, judged sides

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, target: torch.Tensor) -> None:
        distance, above = distance_and_side(outputs)
        target = target.view(-1)
        judged = target.abs() > (self.one_dof or 0.0)
        sums = torch.stack([loss.detach().float() * target.numel(), torch.tensor(float(target.numel()), device=target.device),
                            (distance - target.abs()).abs().sum(), (judged & (above == (target > 0))).sum().float(),
                            judged.sum().float()])
        self.sums = sums if self.sums is None else self.sums + sums

    def means(self) -> dict:
        """{"loss", "distance_mae", "side_accuracy"}, summed over every torchrun process."""
        loss_sum, count, distance_error, right, judged = sum_over_processes(self.sums).tolist()
        return {"loss": loss_sum / count, "distance_mae": distance_error / count,
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
        loss, outputs, target = forward_batch(model, batch, criterion, device, options, augment)
        optimizer.zero_grad(set_to_none=True)
        if options.scaler is None:
            loss.backward()
            optimizer.step()
        else:
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
def recalibrate_batchnorm(model, loader, device, max_batches: int, options: StepOptions = StepOptions()) -> None:
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
def validation_epoch(model, loader, criterion, device, options: StepOptions = StepOptions(),
                     totals: EpochTotals | None = None) -> float:
    """One pass over the validation set; returns the mean loss per image. `totals` collects the
    distance and side errors as well."""
    model.eval()
    totals = totals or EpochTotals()
    for batch in progress(loader, "validate"):
        totals.add(*forward_batch(model, batch, criterion, device, options))
    return totals.means()["loss"]
