"""Train an autofocus network.

SOAF: image -> defocus distance in micrometres, one objective at a time.
MOAF: image + (magnification, NA) -> defocus in depth-of-field units, every objective at once.

    python myTrain.py --root_dir DATA                              # SOAF on 10x/0.3 CSVs, 800 epochs
    python myTrain.py --root_dir DATA --glob "20x_0.7*.csv"        # SOAF on another objective
    python myTrain.py --root_dir DATA --task moaf                  # MOAF on all CSVs
    python myTrain.py --root_dir demo_data --epochs 3 --no-pretrained --num_workers 2   # CPU smoke run
    tensorboard --logdir runs                                      # curves: Loss/train, Loss/val, Learning Rate

Stop with Ctrl-C at any moment; running the same command again resumes from the newest
best checkpoint in --ckpt_dir (pass --no-resume and a fresh --ckpt_dir to start over).
"""
import argparse
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms

from myDataset import DatasetError, MOAFDataset, SOAFDataset
from myModel import ModelCreationError, MOAFModel, SOAFModel

BEST_CHECKPOINT = re.compile(r"ckpt_best_(\d+)\.pt")


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


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the requested run."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops before anything is saved."""


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
    parser.add_argument("--batch_size", type=int, default=32, help="images per batch (default: %(default)s)")
    parser.add_argument("--num_workers", type=int, default=8,
                        help="image-loading processes, capped at the CPU count (default: %(default)s)")
    parser.add_argument("--ckpt_dir", type=Path, default=Path(".ckpts"),
                        help="checkpoint folder (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    return parser


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a SOAF or MOAF autofocus network.",
                                     parents=[get_common_parser()])
    parser.add_argument("--epochs", type=int, default=800, help="total epochs to train (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--fe_str", default="mobilenetv4_conv_small",
                        help="timm feature extractor name (default: %(default)s)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="start from ImageNet weights (default: %(default)s)")
    parser.add_argument("--pretrained_file", default=None,
                        help="local timm weights file, for machines without internet (default: %(default)s)")
    parser.add_argument("--log_dir", type=Path, default=None,
                        help="TensorBoard folder; keep it across resumes (default: runs/<task>)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from the newest ckpt_best_*.pt in --ckpt_dir (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--bn_recalibration_batches", type=int, default=20,
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


def find_best_checkpoint(ckpt_dir: Path) -> Path | None:
    """The ckpt_best_<epoch>.pt with the highest epoch in ckpt_dir, or None."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("ckpt_best_*.pt")
             if (m := BEST_CHECKPOINT.fullmatch(p.name))]
    return max(found)[1] if found else None


def save_atomically(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint onto the CPU; only tensors and plain values are accepted (weights_only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a checkpoint written by myTrain.py")
    return checkpoint


def build_loader(dataset, batch_size: int, num_workers: int, device: torch.device, shuffle: bool) -> DataLoader:
    """A DataLoader whose CUDA-only and worker-only options are set only where they apply."""
    num_workers = min(num_workers, os.cpu_count() or 1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )


def forward_batch(model: nn.Module, batch, criterion, device: torch.device) -> tuple[torch.Tensor, int]:
    """Loss of one batch (inputs..., target) and its size; works for any number of model inputs."""
    *inputs, target = (tensor.to(device, non_blocking=True) for tensor in batch)
    prediction = model(*inputs)  # (N, 1)
    return criterion(prediction, target.view(-1, 1)), target.shape[0]


def train_epoch(model, loader, criterion, optimizer, device) -> float:
    """One pass over the training set; returns the mean loss per image."""
    model.train()
    total_loss, seen = 0.0, 0
    for batch_index, batch in enumerate(loader):
        loss, batch_size = forward_batch(model, batch, criterion, device)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"training loss is {loss_value} at batch {batch_index}; nothing was saved for this "
                "epoch (a lower --lr usually helps)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss_value * batch_size
        seen += batch_size
    return total_loss / seen


@torch.no_grad()
def recalibrate_batchnorm(model, loader, device, max_batches: int) -> None:
    """Recompute BatchNorm statistics as a plain average over training batches at the current weights.

    The running averages trail the weights by many steps; while the weights still change
    fast (training from scratch), evaluating with them gives validation losses that jump
    far above the training loss. Recomputed statistics make validation, the saved
    checkpoints and the ONNX export use statistics that fit the weights.
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
        *inputs, _target = (tensor.to(device, non_blocking=True) for tensor in batch)
        model(*inputs)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@torch.no_grad()
def validation_epoch(model, loader, criterion, device) -> float:
    """One pass over the validation set; returns the mean loss per image."""
    model.eval()
    total_loss, seen = 0.0, 0
    for batch in loader:
        loss, batch_size = forward_batch(model, batch, criterion, device)
        total_loss += loss.item() * batch_size
        seen += batch_size
    return total_loss / seen


def build_datasets(args):
    """Training (with flips, which do not change defocus) and validation datasets."""
    train_transform = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomVerticalFlip(),
        transforms.ToTensor(),
    ])
    dataset_class = TASKS[args.task].dataset
    glob = {} if args.glob is None else {"glob_pattern": args.glob}
    train_set = dataset_class(args.root_dir, "train", transform=train_transform, **glob)
    val_set = dataset_class(args.root_dir, "val", transform=transforms.ToTensor(), **glob)
    return train_set, val_set


def check_nothing_is_overwritten(args, resume_from: Path | None) -> None:
    """Refuse to start from scratch over existing checkpoints: that would overwrite them."""
    existing = sorted(args.ckpt_dir.glob("ckpt_*.pt"))
    if resume_from is None and existing:
        reason = ("--no-resume was given" if not args.resume
                  else "none of them is a ckpt_best_*.pt to resume from")
        raise CheckpointError(
            f"{args.ckpt_dir} already holds {len(existing)} checkpoint(s) and {reason}; starting over "
            "would overwrite them. Use another --ckpt_dir (and --log_dir), or move them away.")


def restore_training_state(checkpoint: dict, path: Path, model, optimizer, args) -> tuple[int, float]:
    """Load weights, optimizer and random state; return (first epoch to train, best val loss)."""
    for name in ("task", "fe_str"):
        trained_with = checkpoint["args"].get(name, "soaf" if name == "task" else None)
        if trained_with != getattr(args, name):
            raise CheckpointError(f"{path} was trained with --{name} {trained_with}, not {getattr(args, name)}; "
                                  f"pass the same --{name} or another --ckpt_dir")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["torch_rng_state"])
    if torch.cuda.is_available() and checkpoint.get("cuda_rng_states"):
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng_states"])
    random.setstate(checkpoint["python_rng_state"])
    return checkpoint["epoch"] + 1, checkpoint["best_loss"]


def main(args: argparse.Namespace) -> None:
    args.task = args.task or "soaf"
    args.log_dir = args.log_dir or Path("runs") / args.task
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    print(f"Using device: {device}")

    train_set, val_set = build_datasets(args)
    train_loader = build_loader(train_set, args.batch_size, args.num_workers, device, shuffle=True)
    val_loader = build_loader(val_set, args.batch_size, args.num_workers, device, shuffle=False)
    print(f"Task {args.task}: {len(train_set)} training and {len(val_set)} validation images from {args.root_dir}")
    train_label_mean = float(train_set.frame[train_set.target_column].mean())  # the baseline to beat

    resume_from = find_best_checkpoint(args.ckpt_dir) if args.resume else None
    check_nothing_is_overwritten(args, resume_from)
    checkpoint = load_checkpoint(resume_from) if resume_from else None
    # a resumed run gets its weights from the checkpoint, so it needs no download
    model = TASKS[args.task].model(args.fe_str, pretrained=args.pretrained and checkpoint is None,
                                   pretrained_file=args.pretrained_file if checkpoint is None else None).to(device)
    criterion = nn.L1Loss()  # mean absolute error, in the target's unit (um for soaf, DOF for moaf)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    start_epoch, best_loss = 0, math.inf
    if checkpoint is not None:
        start_epoch, best_loss = restore_training_state(checkpoint, resume_from, model, optimizer, args)
        print(f"Resumed from {resume_from}: continuing at epoch {start_epoch}, best val loss {best_loss:.4f}")
    if start_epoch >= args.epochs:
        print(f"Nothing to do: {start_epoch} epochs are already trained; raise --epochs to train more.")
        return
    args.ckpt_dir.mkdir(parents=True, exist_ok=True)

    # purge_step drops logged points at or after start_epoch, so epochs trained again after
    # resuming from an earlier best replace their old points instead of doubling them
    with SummaryWriter(log_dir=str(args.log_dir), purge_step=start_epoch) as writer:
        for epoch in range(start_epoch, args.epochs):
            start_time = time.time()
            train_loss = train_epoch(model, train_loader, criterion, optimizer, device)
            recalibrate_batchnorm(model, train_loader, device, args.bn_recalibration_batches)
            val_loss = validation_epoch(model, val_loader, criterion, device)
            current_lr = optimizer.param_groups[0]["lr"]

            writer.add_scalar("Loss/train", train_loss, epoch)
            writer.add_scalar("Loss/val", val_loss, epoch)
            writer.add_scalar("Learning Rate", current_lr, epoch)
            writer.flush()

            is_best = val_loss < best_loss
            best_loss = min(best_loss, val_loss)
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "train_loss": train_loss,
                "val_loss": val_loss,
                "best_loss": best_loss,
                "train_label_mean": train_label_mean,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "torch_rng_state": torch.get_rng_state(),
                "cuda_rng_states": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python_rng_state": random.getstate(),
            }
            saved = []
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
                  f"Val Loss: {val_loss:.4f} | LR: {current_lr:.2e} | "
                  f"Time: {time.time() - start_time:.2f}s" + (f" | saved {', '.join(saved)}" if saved else ""))


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
    except KeyboardInterrupt:
        print("\nInterrupted. Checkpoints written so far are complete; rerun the same command to resume.",
              file=sys.stderr)
        raise SystemExit(130)
    except (DatasetError, ModelCreationError, CheckpointError, NonFiniteLossError) as error:
        raise SystemExit(f"error: {message_of(error)}")


if __name__ == "__main__":
    run(main, get_args_parser().parse_args())
