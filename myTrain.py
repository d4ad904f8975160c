"""Train an autofocus network.

SOAF: image -> defocus distance in micrometres, one objective at a time.
MOAF: image + (magnification, NA) -> defocus in depth-of-field units, every objective at once.

    python myTrain.py --root_dir DATA                              # SOAF on 10x/0.3 CSVs, 800 epochs
    python myTrain.py --root_dir DATA --glob "20x_0.7*.csv"        # SOAF on another objective
    python myTrain.py --root_dir DATA --task moaf                  # MOAF on all CSVs
    python myTrain.py --root_dir demo_data --no-pretrained --lr 1e-3 --batch_size 16 --dropout 0 \
        --scheduler cosine --warmup_epochs 1 --epochs 30 --num_workers 2      # from scratch, on the CPU
    torchrun --nproc_per_node=4 myTrain.py --root_dir DATA         # four GPUs
    tensorboard --logdir runs                                      # curves: Loss/train, Loss/val, Learning Rate

Stop with Ctrl-C at any moment; running the same command again resumes from the newest
best checkpoint in --ckpt_dir (pass --no-resume and a fresh --ckpt_dir to start over).
"""
import argparse
import builtins
import inspect
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from matplotlib.figure import Figure
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, default_collate
from torch.utils.tensorboard import SummaryWriter
from torchvision.transforms import v2
from tqdm import tqdm

from checkpoints import (CheckpointError, checkpoints_newest_first, load_checkpoint, remove_unfinished_writes,
                         restore_rng_states, rng_states, save_atomically)
from myDataset import SPLITS, DatasetError, MOAFDataset, SOAFDataset, check_split
from myModel import HEADS, ModelCreationError, MOAFModel, SOAFModel
from report import depth_of_field_um

IMAGE_SIZE = (224, 224)  # what the networks are trained on; other sizes are refused, not resized


@dataclass(frozen=True)
class Task:
    """What differs between the two tasks; the training loop is the same."""

    dataset: type
    model: type
    unit: str  # of the target, the predictions and the L1 loss


TASKS = {
    "soaf": Task(SOAFDataset, SOAFModel, unit="um"),
    "moaf": Task(MOAFDataset, MOAFModel, unit="DOF"),
}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops before anything is saved."""


def positive(kind, allow_zero: bool = False):
    """An argparse type: a number of `kind` above zero (or at least zero)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not (value >= 0 if allow_zero else value > 0) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if allow_zero else 'above 0'}, got {text}")
        return value
    return parse


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    value = positive(float, allow_zero=True)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
    return value


def get_common_parser() -> argparse.ArgumentParser:
    """Arguments shared by myTrain.py and myTest.py."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--root_dir", type=Path, required=True,
                        help="dataset root holding .train/ .val/ .test/ and the images")
    parser.add_argument("--task", choices=sorted(TASKS), default=None,
                        help="soaf: one objective, target defocus_label (um); moaf: all objectives, "
                             "target defocus_dof_label (default: myTrain.py soaf, myTest.py the checkpoint's)")
    parser.add_argument("--glob", default=None,
                        help="CSV files to use in each split, e.g. '20x_0.7*.csv' (default: myTrain.py "
                             "'10x_0.3*.csv' for soaf and '*.csv' for moaf, myTest.py the checkpoint's)")
    parser.add_argument("--batch_size", type=positive(int), default=32, help="images per batch (default: %(default)s)")
    parser.add_argument("--num_workers", type=positive(int, allow_zero=True), default=8,
                        help="image-loading processes, capped at the CPU count (default: %(default)s)")
    parser.add_argument("--ckpt_dir", type=Path, default=Path(".ckpts"),
                        help="checkpoint folder (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC memory layout: faster convolutions on tensor-core GPUs and with "
                             "oneDNN on CPUs (default: %(default)s)")
    parser.add_argument("--allow_outside_root", action="store_true",
                        help="accept image paths that are absolute or leave root_dir with '..' (default: refuse)")
    return parser


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a SOAF or MOAF autofocus network.",
                                     parents=[get_common_parser()])
    parser.add_argument("--epochs", type=positive(int), default=800, help="total epochs to train (default: %(default)s)")
    parser.add_argument("--lr", type=positive(float), default=1e-5, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--fe_str", default="mobilenetv4_conv_small",
                        help="timm feature extractor name (default: %(default)s)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="start from ImageNet weights (default: %(default)s)")
    parser.add_argument("--pretrained_file", default=None,
                        help="local timm weights file, for machines without internet (default: %(default)s)")
    parser.add_argument("--head", choices=HEADS, default="signed",
                        help="signed: one signed defocus output (L1 loss); split: distance from focus and "
                             "the probability of each side, learnt apart, for optics whose side of "
                             "focus shows only weakly (default: %(default)s)")
    parser.add_argument("--dropout", type=probability, default=0.5,
                        help="dropout probability in the regression head (default: %(default)s)")
    parser.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                        help="mixed precision: auto is bf16 on CUDA GPUs that support it, fp16 (with "
                             "gradient scaling) on older ones, off on CPU (default: %(default)s)")
    parser.add_argument("--cache_images", action="store_true",
                        help="decode every training and validation image once and keep them in memory "
                             "(its size is printed; 150 KiB per 224x224 RGB image) (default: off)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training model: faster steps after a minute of "
                             "compiling (default: off)")
    parser.add_argument("--log_dir", type=Path, default=None,
                        help="TensorBoard folder; keep it across resumes (default: runs/<task>)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from a checkpoint in --ckpt_dir if there is one (default: %(default)s)")
    parser.add_argument("--resume_from", choices=["best", "latest"], default="best",
                        help="best: the newest ckpt_best_*.pt; latest: the newest checkpoint of either kind, "
                             "so that no epoch after the last best is lost (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="only check the dataset (every CSV row and image) and exit")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--scheduler", choices=["none", "cosine", "plateau"], default="none",
                        help="learning-rate schedule per epoch: none keeps --lr; cosine decays it to 0 at "
                             "--epochs after --warmup_epochs of linear warm-up; plateau halves it when the "
                             "validation loss has not improved for 10 epochs (default: %(default)s)")
    parser.add_argument("--warmup_epochs", type=positive(int, allow_zero=True), default=0,
                        help="epochs of linear warm-up before the cosine decay (default: %(default)s)")
    parser.add_argument("--patience", type=positive(int, allow_zero=True), default=0,
                        help="stop when the validation loss has not improved for this many epochs; "
                             "0 never stops early (default: %(default)s)")
    parser.add_argument("--log_images_every", type=positive(int, allow_zero=True), default=0,
                        help="every N epochs, show validation images with true and predicted defocus "
                             "in TensorBoard; 0: never (default: %(default)s)")
    parser.add_argument("--bn_recalibration_batches", type=positive(int, allow_zero=True), default=10,
                        help="training batches used to recompute BatchNorm statistics before each "
                             "validation; 0 keeps the running averages (default: %(default)s)")
    return parser


def is_regular_checkpoint_epoch(epoch: int) -> bool:
    """The regular saving schedule: every 10th epoch below 200, 5th below 400, 3rd below 600, then all."""
    if epoch < 200:
        return epoch % 10 == 0
    if epoch < 400:
        return epoch % 5 == 0
    if epoch < 600:
        return epoch % 3 == 0
    return True


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and random in a DataLoader worker from its torch seed, which the loader derives
    from the main process's torch RNG: workers differ from each other and repeat between runs."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def rank_and_world_size() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun; return the device this process trains on.

    Each process drives one GPU (cuda:LOCAL_RANK, NCCL) or, on CPU, one share of the
    cores (gloo). Only rank 0 prints, logs and writes checkpoints.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() != 0:
        builtins.print = print_when_forced(builtins.print)
    return device


def print_when_forced(builtin_print):
    """A print that stays silent unless called with force=True (for the other torchrun processes)."""
    def rank_print(*args, force: bool = False, **kwargs) -> None:
        if force:
            builtin_print(*args, **kwargs)
    return rank_print


def build_loader(dataset, batch_size: int, num_workers: int, device: torch.device, shuffle: bool,
                 seed: int = 0) -> DataLoader:
    """A DataLoader whose CUDA-only and worker-only options are set only where they apply.

    Under torchrun each process reads its own share of the images: the training set through
    a DistributedSampler (call `loader.sampler.set_epoch(epoch)` for a new order every
    epoch), other splits as every world_size-th image, so that no image is counted twice.
    """
    rank, world_size = rank_and_world_size()
    num_workers = min(num_workers, max(1, (os.cpu_count() or 1) // world_size))
    sampler = None
    if world_size > 1 and shuffle:
        sampler, shuffle = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed), None
    elif world_size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
    )


@dataclass
class StepOptions:
    """How each forward pass runs. The defaults are plain fp32; `step_options` picks the fast ones."""

    amp_dtype: torch.dtype | None = None  # autocast to this dtype; None: fp32
    channels_last: bool = False  # NHWC images, as the model's weights are then laid out
    scaler: torch.amp.GradScaler | None = None  # fp16 only: keeps small gradients from vanishing


def step_options(args, device: torch.device) -> StepOptions:
    """Resolve --amp for the device; bf16 is no faster than fp32 for training on CPUs, even with AMX."""
    amp = args.amp
    if amp == "auto":
        amp = "off" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
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


def progress(loader, description: str) -> tqdm:
    """A batch progress bar that clears when done; silent when the output is no terminal (logs,
    CI) and on every torchrun process but the first."""
    disable = None if rank_and_world_size()[0] == 0 else True
    return tqdm(loader, desc=description, leave=False, disable=disable, unit="batch", dynamic_ncols=True)


def show_running_loss(bar: tqdm, total_loss: float, seen: int, start_time: float) -> None:
    bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start_time):.1f}")


def sum_over_processes(sums: torch.Tensor) -> torch.Tensor:
    """`sums` added up over all torchrun processes, in float64 on the CPU."""
    sums = sums.double()
    if rank_and_world_size()[1] > 1:
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"  # NCCL: GPU only
        sums = sums.to(device)
        dist.all_reduce(sums)
    return sums.cpu()


def train_epoch(model, loader, criterion, optimizer, device, epoch: int | None = None,
                options: StepOptions = StepOptions(), augment: bool = True, totals: EpochTotals | None = None) -> float:
    """One pass over the training set, with augment_batch unless `augment` is False; returns the
    mean loss per image. `totals` collects the distance and side errors as well."""
    model.train()
    totals = totals or EpochTotals()
    total_loss, seen, start_time = 0.0, 0, time.perf_counter()
    bar = progress(loader, f"train {epoch}")
    for batch_index, batch in enumerate(bar):
        loss, outputs, target = forward_batch(model, batch, criterion, device, options, augment)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"training loss is {loss_value} at epoch {epoch}, batch {batch_index}; nothing was saved "
                "for this epoch, the checkpoints before it are intact (a lower --lr usually helps)")
        optimizer.zero_grad(set_to_none=True)
        if options.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            options.scaler.scale(loss).backward()
            options.scaler.step(optimizer)
            options.scaler.update()
        totals.add(loss, outputs, target)
        total_loss += loss_value * target.shape[0]
        seen += target.shape[0]
        show_running_loss(bar, total_loss, seen, start_time)
    return totals.means()["loss"]


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
    total_loss, seen, start_time = 0.0, 0, time.perf_counter()
    bar = progress(loader, "validate")
    for batch in bar:
        loss, outputs, target = forward_batch(model, batch, criterion, device, options)
        totals.add(loss, outputs, target)
        total_loss += loss.item() * target.shape[0]
        seen += target.shape[0]
        show_running_loss(bar, total_loss, seen, start_time)
    return totals.means()["loss"]


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


def build_datasets(args):
    """Training and validation datasets of uint8 images (a quarter of the bytes of float ones to
    collate and copy; split_batch scales them on the device), decoded into memory with --cache_images."""
    train_set = build_dataset(args, "train", v2.PILToTensor())
    val_set = build_dataset(args, "val", v2.PILToTensor())
    if args.cache_images:
        mib = sum(dataset.cache_images(lambda indices: progress(indices, f"caching {split}"))
                  for split, dataset in (("train", train_set), ("val", val_set)))
        print(f"Cached {len(train_set) + len(val_set)} decoded images in memory: {mib:.0f} MiB")
    return train_set, val_set


def build_dataset(args, split: str, transform, task: str | None = None, glob: str | None = None):
    """One split of the task's dataset with the script's image-size and path rules."""
    task, glob = task or args.task, glob or args.glob
    return TASKS[task].dataset(args.root_dir, split, transform, **({} if glob is None else {"glob_pattern": glob}),
                               allow_outside_root=args.allow_outside_root, image_size=IMAGE_SIZE)


def check_dataset(args) -> None:
    """--check: read every CSV row and decode every image of all splits, print a summary and the problems."""
    dataset_class = TASKS[args.task].dataset
    glob = args.glob or inspect.signature(dataset_class).parameters["glob_pattern"].default
    print(f"Checking {args.root_dir} for task {args.task}, CSV files matching {glob!r}")
    problems = []
    for split in SPLITS:
        summary, split_problems = check_split(args.root_dir, split, glob, dataset_class, IMAGE_SIZE,
                                              args.allow_outside_root)
        print("\n".join(summary))
        problems += split_problems
    if problems:
        print(f"\n{len(problems)} problem(s):", *problems, sep="\n  ", file=sys.stderr)
        raise SystemExit(1)
    print("No problems found.")


def build_scheduler(optimizer, args):
    """The --scheduler, stepped once per epoch, or None."""
    if args.scheduler == "cosine":
        def factor(epoch: int) -> float:
            if epoch < args.warmup_epochs:
                return (epoch + 1) / (args.warmup_epochs + 1)
            decay_epochs = max(1, args.epochs - args.warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * (epoch - args.warmup_epochs) / decay_epochs))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if args.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=10)
    return None


def run_config(args) -> dict:
    """Everything needed to repeat a run: the arguments, library versions and the code's git commit."""
    import onnxruntime
    import timm
    import torchvision

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "timm": timm.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "git_commit": commit,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


@torch.no_grad()
def validation_image_grid(model, dataset, device, unit: str, count: int = 8) -> Figure:
    """`count` validation images spread over the split, titled with their true and predicted defocus."""
    model.eval()
    indices = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).astype(int)
    inputs, targets = split_batch(default_collate([dataset[int(index)] for index in indices]), device)
    predictions = model(*inputs).view(-1).cpu()
    images = inputs[0].permute(0, 2, 3, 1).cpu().numpy()
    figure = Figure(figsize=(2.2 * len(indices), 2.9))
    for axis, image, target, prediction in zip(figure.subplots(1, len(indices), squeeze=False)[0], images,
                                               targets.view(-1).cpu(), predictions):
        axis.imshow(image)
        axis.set_title(f"true {target.item():+.2f}\npred {prediction.item():+.2f} {unit}", fontsize=9)
        axis.axis("off")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.05)
    return figure


def log_distance_and_side(writer: SummaryWriter, train: dict, val: dict, epoch: int) -> None:
    """TensorBoard curves of the two questions apart: how far from focus, and on which side."""
    for split, means in (("train", train), ("val", val)):
        writer.add_scalar(f"Distance MAE/{split}", means["distance_mae"], epoch)
        if math.isfinite(means["side_accuracy"]):
            writer.add_scalar(f"Side accuracy/{split}", means["side_accuracy"], epoch)


def warn_if_one_sided(train_labels: torch.Tensor) -> None:
    """A network learns the side of focus only from labels on both sides of it."""
    if (train_labels > 0).all() or (train_labels < 0).all() or not (train_labels != 0).any():
        print("warning: every training label has the same sign, so the side of focus cannot be learnt "
              "from this data; image both sides of focus", file=sys.stderr)


def one_depth_of_field(dataset, task: str) -> float | None:
    """One depth of field in the task's unit: 1 for moaf; for soaf the median DOF in um of the
    dataset's rows (from defocus_label / defocus_dof_label), or None where the CSVs cannot tell."""
    if task == "moaf":
        return 1.0
    dof_um = depth_of_field_um(dataset.frame)
    return float(dof_um.median()) if dof_um is not None and dof_um.notna().any() else None


def out_of_patience(epoch: int, best_epoch: int, patience: int) -> bool:
    """Early stop: `patience` epochs have passed since the best one (patience 0: never)."""
    return patience > 0 and epoch - best_epoch >= patience


def checkpoint_to_resume(args) -> tuple[Path | None, dict | None]:
    """The newest readable checkpoint to resume from (by --resume_from); unreadable ones are skipped with a warning."""
    if not args.resume:
        return None, None
    for path in checkpoints_newest_first(args.ckpt_dir, best_only=args.resume_from == "best"):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            print(f"warning: {error}; trying the next newest checkpoint", file=sys.stderr)
    return None, None


def check_nothing_is_overwritten(args, resume_from: Path | None) -> None:
    """Refuse to start from scratch over existing checkpoints: that would overwrite them."""
    existing = sorted(args.ckpt_dir.glob("ckpt_*.pt"))
    if resume_from is None and existing:
        reason = ("--no-resume was given" if not args.resume
                  else f"none of them can be resumed from with --resume_from {args.resume_from}")
        raise CheckpointError(
            f"{args.ckpt_dir} already holds {len(existing)} checkpoint(s) and {reason}; starting over "
            "would overwrite them. Use another --ckpt_dir (and --log_dir), or move them away.")


def restore_training_state(checkpoint: dict, path: Path, model, optimizer, scheduler, args) -> tuple[int, float]:
    """Load weights, optimizer, schedule and random state; return (first epoch to train, best val loss)."""
    defaults = {"task": "soaf", "fe_str": None, "head": "signed"}  # what checkpoints without the entry used
    for name in defaults:
        trained_with = checkpoint["args"].get(name, defaults[name])
        if trained_with != getattr(args, name):
            raise CheckpointError(f"{path} was trained with --{name} {trained_with}, not {getattr(args, name)}; "
                                  f"pass the same --{name} or another --ckpt_dir (nothing was overwritten)")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint.get("scheduler"):
        scheduler.load_state_dict(checkpoint["scheduler"])
    restore_rng_states(checkpoint["rng_states"])
    return checkpoint["epoch"] + 1, checkpoint["best_loss"]


def main(args: argparse.Namespace) -> None:
    args.task = args.task or "soaf"
    args.log_dir = args.log_dir or Path("runs") / args.task
    if args.check:
        check_dataset(args)
        return
    device = init_distributed(torch.device(args.device))
    rank, world_size = rank_and_world_size()
    torch.manual_seed(args.seed + rank)  # the same weights everywhere (DDP copies rank 0's), other augmentations
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
    options = step_options(args, device)
    print(f"Using device: {device}" + (f" x {world_size} processes" if world_size > 1 else "")
          + f", mixed precision {options.amp_dtype or 'off'}, channels_last {options.channels_last}")

    train_set, val_set = build_datasets(args)
    train_loader = build_loader(train_set, args.batch_size, args.num_workers, device, shuffle=True, seed=args.seed)
    val_loader = build_loader(val_set, args.batch_size, args.num_workers, device, shuffle=False)
    print(f"Task {args.task}: {len(train_set)} training and {len(val_set)} validation images from {args.root_dir}")
    train_labels = torch.tensor(train_set.frame[train_set.target_column].to_numpy(), dtype=torch.float32)
    train_label_mean = float(train_labels.mean())  # the baseline to beat
    warn_if_one_sided(train_labels)
    one_dof = one_depth_of_field(train_set, args.task)

    resume_from, checkpoint = checkpoint_to_resume(args)
    check_nothing_is_overwritten(args, resume_from)
    # a resumed run gets its weights from the checkpoint, so it needs no download
    model = TASKS[args.task].model(args.fe_str, pretrained=args.pretrained and checkpoint is None,
                                   pretrained_file=args.pretrained_file if checkpoint is None else None,
                                   dropout=args.dropout, head=args.head).to(device)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = DefocusLoss()  # in the target's unit (um for soaf, DOF for moaf)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = build_scheduler(optimizer, args)

    start_epoch, best_loss, best_epoch = 0, math.inf, -1
    if checkpoint is None:
        model.set_target_scale(train_labels)
        print(f"Target scale from the training labels: median {model.target_center.item():+.3f}, "
              f"mean absolute deviation {model.target_scale.item():.3f} {TASKS[args.task].unit}")
    else:
        start_epoch, best_loss = restore_training_state(checkpoint, resume_from, model, optimizer, scheduler, args)
        best_epoch = checkpoint.get("best_epoch", start_epoch - 1)
        print(f"Resumed from {resume_from}: continuing at epoch {start_epoch}, best val loss {best_loss:.4f}")
    if start_epoch >= args.epochs:
        print(f"Nothing to do: {start_epoch} epochs are already trained; raise --epochs to train more.")
        return
    # the training steps may run wrapped (DDP, compiled); validation, checkpoints and export use `model`
    train_model = DistributedDataParallel(model) if world_size > 1 else model
    if args.compile:
        train_model = torch.compile(train_model)
    config = run_config(args)
    if rank == 0:
        args.ckpt_dir.mkdir(parents=True, exist_ok=True)
        remove_unfinished_writes(args.ckpt_dir)
        (args.ckpt_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    # purge_step drops logged points at or after start_epoch, so epochs trained again after
    # resuming from an earlier best replace their old points instead of doubling them
    with SummaryWriter(log_dir=str(args.log_dir), purge_step=start_epoch) if rank == 0 else nullcontext() as writer:
        if writer:
            writer.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```", start_epoch)
        for epoch in range(start_epoch, args.epochs):
            start_time = time.time()
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            train_totals, val_totals = EpochTotals(one_dof), EpochTotals(one_dof)
            train_loss = train_epoch(train_model, train_loader, criterion, optimizer, device, epoch, options,
                                     totals=train_totals)
            recalibrate_batchnorm(model, train_loader, device, args.bn_recalibration_batches, options)
            val_loss = validation_epoch(model, val_loader, criterion, device, options, totals=val_totals)
            current_lr = optimizer.param_groups[0]["lr"]

            if writer:
                writer.add_scalar("Loss/train", train_loss, epoch)
                writer.add_scalar("Loss/val", val_loss, epoch)
                writer.add_scalar("Learning Rate", current_lr, epoch)
                log_distance_and_side(writer, train_totals.means(), val_totals.means(), epoch)
                if args.log_images_every and epoch % args.log_images_every == 0:
                    writer.add_figure("Validation images", validation_image_grid(
                        model, val_set, device, TASKS[args.task].unit), epoch, close=False)
                writer.flush()
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
            elif scheduler is not None:
                scheduler.step()

            is_best = val_loss < best_loss
            best_loss = min(best_loss, val_loss)
            best_epoch = epoch if is_best else best_epoch
            saved, save_start = [], time.time()
            if rank == 0:
                state = {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "train_label_mean": train_label_mean,
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "rng_states": rng_states(),
                }
                # the two saving rules are independent: an epoch can be both regular and best
                if is_regular_checkpoint_epoch(epoch):
                    regular_path = args.ckpt_dir / f"ckpt_{epoch:04d}.pt"
                    save_atomically(state, regular_path)
                    saved.append(regular_path.name)
                if is_best:
                    best_path = args.ckpt_dir / f"ckpt_best_{epoch:04d}.pt"
                    save_atomically(state, best_path)
                    for old_best in args.ckpt_dir.glob("ckpt_best_*.pt"):
                        if old_best != best_path:
                            old_best.unlink()  # only after the new best is safely in place
                    saved.append(best_path.name)

            print(f"Epoch {epoch + 1}/{args.epochs} | Train Loss: {train_loss:.4f} | "
                  f"Val Loss: {val_loss:.4f} | LR: {current_lr:.2e} | Time: {time.time() - start_time:.2f}s"
                  + (f" | saved {', '.join(saved)} in {time.time() - save_start:.2f}s" if saved else ""))
            if out_of_patience(epoch, best_epoch, args.patience):
                print(f"Stopping early: the validation loss has not improved for {args.patience} epochs "
                      f"(best {best_loss:.4f} at epoch {best_epoch + 1}).")
                break


def message_of(error: Exception) -> str:
    """The error's own message; errors re-raised from DataLoader workers carry a traceback, keep its last line."""
    text = str(error).strip()
    if text.startswith("Caught "):
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def run(main_function, args) -> None:
    """Run a script's main; user-facing problems end with a message and exit code, not a traceback."""
    try:
        main_function(args)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except KeyboardInterrupt:
        print("\nInterrupted. Checkpoints written so far are complete; rerun the same command to resume.",
              file=sys.stderr)
        raise SystemExit(130)
    except (DatasetError, ModelCreationError, CheckpointError, NonFiniteLossError) as error:
        raise SystemExit(f"error: {message_of(error)}")


if __name__ == "__main__":
    run(main, get_args_parser().parse_args())
