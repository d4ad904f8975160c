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
import os

# Set before torch loads OpenMP: compute threads that wait for work sleep instead of spinning.
# Spinning threads take the cores from whatever runs beside them (another job, this run's
# loader processes): on two cores shared with a two-core job, a CPU epoch took 11x its time
# alone with spinning threads, 2.5x with sleeping ones (docs/speed.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
from pathlib import Path

from autofocuskit.cli import add_data_arguments, positive, probability, run
from autofocuskit.schema import CAMERA_PIXEL_UM, DEFAULT_BACKBONE, HEADS, MOAF_GLOB, SOAF_GLOB, TASK_NAMES


def get_args_parser() -> argparse.ArgumentParser:
    parser = add_data_arguments(argparse.ArgumentParser(description="Train a SOAF or MOAF autofocus network."))
    parser.add_argument("--task", choices=TASK_NAMES, default="soaf",
                        help="soaf: one objective, target defocus_label (um); moaf: every objective, target "
                             "defocus_dof_label (DOF) (default: %(default)s)")
    parser.add_argument("--glob", default=None,
                        help=f"CSV files to use in each split, e.g. '20x_0.7*.csv' (default: {SOAF_GLOB!r} for "
                             f"soaf, {MOAF_GLOB!r} for moaf)")
    parser.add_argument("--fe_str", default=DEFAULT_BACKBONE, help="timm backbone name (default: %(default)s)")
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
    parser.add_argument("--camera_pixel_um", type=positive(float), default=CAMERA_PIXEL_UM,
                        help="the camera's pixel size in um: with each objective's magnification it gives the "
                        "specimen pixel size the network learns at, recorded in checkpoints and ONNX files so "
                        "that a microscope's frames are resampled to it (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--log_images_every", type=positive(int, allow_zero=True), default=0,
                        help="every N epochs, show validation images with true and predicted defocus "
                             "in TensorBoard; 0: never (default: %(default)s)")
    parser.add_argument("--bn_recalibration_batches", type=positive(int, allow_zero=True), default=10,
                        help="training batches used to recompute BatchNorm statistics before each "
                             "validation; 0 keeps the running averages (default: %(default)s)")
    return add_schedule_arguments(parser)


def add_schedule_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """How long and how fast: epochs or steps, the learning rate and its schedule, early stopping."""
    group = parser.add_argument_group("how long and how fast")
    group.add_argument("--epochs", type=positive(int), default=800, help="total epochs to train (default: %(default)s)")
    group.add_argument("--steps", type=positive(int, allow_zero=True), default=0,
                       help="train for this many optimizer steps instead of --epochs: the epochs become as many "
                            "as it takes, so that a dataset of few images trains as long as one of many; "
                            "0: --epochs counts (default: %(default)s)")
    group.add_argument("--lr", type=positive(float), default=1e-5, help="Adam learning rate (default: %(default)s)")
    group.add_argument("--scheduler", choices=["none", "cosine", "plateau"], default="none",
                       help="learning-rate schedule per epoch: none keeps --lr; cosine decays it to 0 at "
                            "--epochs after --warmup_epochs of linear warm-up; plateau halves it when the "
                            "validation loss has not improved for 10 epochs (default: %(default)s)")
    group.add_argument("--warmup_epochs", type=positive(int, allow_zero=True), default=0,
                       help="epochs of linear warm-up before the cosine decay (default: %(default)s)")
    group.add_argument("--patience", type=positive(int, allow_zero=True), default=0,
                       help="stop when the validation loss has not improved for this many epochs; "
                            "0 never stops early (default: %(default)s)")
    return parser

if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()  # before torch loads, so that --help and typos answer at once

# the training run: everything below loads torch
import json
import math
import platform
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, default_collate
from torch.utils.tensorboard import SummaryWriter
from torchvision.transforms import v2

from autofocuskit.checkpoints import CheckpointError, CheckpointSaver, check_nothing_is_overwritten, checkpoint_to_resume, remove_unfinished_writes, restore_rng_states, rng_states, warn_if_space_is_short
from autofocuskit.cli import UserError, args_as_dict, message_of, usable_cpu_count, writing
from autofocuskit.epochs import DefocusLoss, EpochTotals, StepOptions, fit_side_logistic, reestimate_batchnorm, split_batch, step_options, train_epoch, validation_epoch
from autofocuskit.imaging import IMAGE_SIZE
from autofocuskit.datasets import check_split
from autofocuskit.processes import STOP, fit_threads_to_cores, gather_from_processes, init_distributed, leave_distributed, loader_workers, progress, rank_and_world_size, resolve_device
from autofocuskit.schema import SPLITS, dof_um_of_rows, objective_name
from autofocuskit.tasks import TASKS, build_dataset, build_loader

# a run whose last quarter of epochs brought the validation loss this much (a fraction) below its
# best before them ended still learning: with few fields and short runs the side of focus is the
# last thing learnt (the 30 epochs that suit 768 demo images leave 192 images' side at 70-91 %)
STILL_FALLING = 0.05

# --- data ---------------------------------------------------------------------------------

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

def build_loaders(args, train_set, val_set, device: torch.device):
    """Training loader (shuffled, a new order every epoch) and validation loader."""
    print(f"Task {args.task}: {len(train_set)} training and {len(val_set)} validation images from {args.root_dir}")
    return (build_loader(train_set, args.batch_size, args.num_workers, device, shuffle=True, seed=args.seed),
            build_loader(val_set, args.batch_size, args.num_workers, device, shuffle=False))


def check_dataset(args) -> None:
    """--check: read every CSV row and decode every image of all splits, print a summary and the problems."""
    task = TASKS[args.task]
    glob = args.glob or task.default_glob
    print(f"Checking {args.root_dir} for task {args.task}, CSV files matching {glob!r}")
    problems = []
    for split in SPLITS:
        summary, split_problems = check_split(args.root_dir, split, glob, task.dataset, (IMAGE_SIZE, IMAGE_SIZE),
                                              args.allow_outside_root)
        print("\n".join(summary))
        problems += split_problems
    if problems:
        print(f"\n{len(problems)} problem(s):", *problems, sep="\n  ", file=sys.stderr)
        raise SystemExit(1)
    print("No problems found.")


def target_values(dataset) -> torch.Tensor:
    """(N,) labels of a split in the task's unit, read from its CSV rows (no image is opened)."""
    return torch.tensor(dataset.frame[dataset.target_column].to_numpy(), dtype=torch.float32)


def training_labels(train_set) -> torch.Tensor:
    """(N,) labels of the training split in the task's unit; warns if they cannot teach the side of focus."""
    labels = target_values(train_set)
    if (labels > 0).all() or (labels < 0).all() or not (labels != 0).any():
        print("warning: every training label has the same sign, so the side of focus cannot be learnt "
              "from this data; image both sides of focus", file=sys.stderr)
    return labels


def mean_predictor_mae(train_labels: torch.Tensor, val_set) -> float:
    """The validation MAE of always predicting the training labels' mean: the bar a network has to clear."""
    return float((target_values(val_set) - train_labels.mean()).abs().mean())


def training_pixel_sizes(train_set, camera_pixel_um: float) -> dict[str, float]:
    """The specimen pixel size (um) the network learns blur at, per objective of the training
    split: camera pixel / magnification. A network reads blur in pixels, so a microscope must
    give it frames at this sampling (FocusPredictor resamples to it). Empty where the CSVs
    do not name their objectives."""
    if not {"magnification", "NA"} <= set(train_set.frame.columns):
        return {}
    objectives = train_set.frame[["magnification", "NA"]].drop_duplicates().itertuples(index=False)
    return {objective_name(m, na): camera_pixel_um / m for m, na in objectives}


def one_depth_of_field(dataset, task: str) -> float | None:
    """One depth of field in the task's unit: 1 for moaf; for soaf the median DOF in um of the
    dataset's rows (from defocus_label / defocus_dof_label), or None where the CSVs cannot tell."""
    if task == "moaf":
        return 1.0
    dof_um = dof_um_of_rows(dataset.frame)
    return float(dof_um.median()) if dof_um is not None and dof_um.notna().any() else None

# --- model, optimiser, resuming -------------------------------------------------------------

def epochs_for_steps(steps: int, batches_per_epoch: int, rank: int = 0) -> int:
    """--steps as whole epochs: the fewest that take at least `steps` optimizer steps."""
    epochs = math.ceil(steps / batches_per_epoch)
    if rank == 0:
        print(f"--steps {steps}: {epochs} epochs of {batches_per_epoch} batches")
    return epochs


def build_model(args, device: torch.device, channels_last: bool, fresh: bool):
    """The task's network; only a fresh run loads ImageNet weights (a resumed one gets every weight
    from its checkpoint, so it needs no download)."""
    model = TASKS[args.task].model(args.fe_str, pretrained=args.pretrained and fresh,
                                   pretrained_file=args.pretrained_file if fresh else None,
                                   dropout=args.dropout, head=args.head).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


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


def step_scheduler(scheduler, val_loss: float) -> None:
    """One step per epoch: the plateau schedule watches the validation loss, the others count epochs."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


def resume_checkpoint(args) -> tuple[Path | None, dict | None]:
    """The checkpoint this run continues from, or (None, None) for a fresh start that overwrites nothing."""
    path, checkpoint = checkpoint_to_resume(args.ckpt_dir, args.resume_from) if args.resume else (None, None)
    reason = "--no-resume was given" if not args.resume else "none of them can be read"
    check_nothing_is_overwritten(args.ckpt_dir, path, reason)
    return path, checkpoint


def restore_training_state(checkpoint: dict, path: Path, model, optimizer, scheduler, scaler, args) -> int:
    """Load weights, optimizer, schedule, gradient scaler and this process's random state; return
    the first epoch to train. Refuses a checkpoint of another task, backbone or head."""
    defaults = {"task": "soaf", "fe_str": None, "head": "signed"}  # what checkpoints without the entry used
    for name, default in defaults.items():
        trained_with = checkpoint["args"].get(name, default)
        if trained_with != getattr(args, name):
            raise CheckpointError(f"{path} was trained with --{name} {trained_with}, not {getattr(args, name)}; "
                                  f"pass the same --{name} or another --ckpt_dir (nothing was overwritten)")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint.get("scheduler"):
        scheduler.load_state_dict(checkpoint["scheduler"])
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            # the stored rate follows the checkpoint's --epochs; this run's schedule may be longer
            for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base_lr * factor(scheduler.last_epoch)
    if checkpoint.get("scaler"):  # empty from a disabled scaler (any precision but fp16): scaling starts afresh
        scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_states(checkpoint["rng_states"], rank_and_world_size()[0])
    return checkpoint["epoch"] + 1


# --- logging ------------------------------------------------------------------------------

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
        "args": args_as_dict(args),
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

def log_epoch(writer: SummaryWriter, epoch: int, train: dict, val: dict, lr: float, baseline_mae: float) -> None:
    """One point per curve: the losses, the learning rate, the signed error against always
    predicting the training mean (`baseline_mae`), and the two questions apart (how far from
    focus, on which side)."""
    writer.add_scalar("Loss/train", train["loss"], epoch)
    writer.add_scalar("Loss/val", val["loss"], epoch)
    writer.add_scalar("Learning Rate", lr, epoch)
    writer.add_scalar("Signed MAE/val_mean_predictor", baseline_mae, epoch)
    for split, means in (("train", train), ("val", val)):
        writer.add_scalar(f"Signed MAE/{split}", means["signed_mae"], epoch)
        writer.add_scalar(f"Distance MAE/{split}", means["distance_mae"], epoch)
        if math.isfinite(means["side_accuracy"]):
            writer.add_scalar(f"Side accuracy/{split}", means["side_accuracy"], epoch)


def log_validation_images(writer: SummaryWriter, epoch: int, args, model, val_set, device: torch.device) -> None:
    """Every --log_images_every epochs, a grid of validation images with their labels and predictions."""
    if args.log_images_every and epoch % args.log_images_every == 0:
        writer.add_figure("Validation images", validation_image_grid(model, val_set, device, TASKS[args.task].unit),
                          epoch, close=False)


def out_of_patience(epoch: int, best_epoch: int, patience: int) -> bool:
    """Early stop: `patience` epochs have passed since the best one (patience 0: never)."""
    return patience > 0 and epoch - best_epoch >= patience


def still_falling(val_losses: list[float]) -> float | None:
    """How far below the best validation loss before them the best of a run's last quarter of
    epochs lies (a fraction), where that is more than STILL_FALLING: the run ended while the
    network was still learning. None otherwise, and for runs of fewer than 8 epochs."""
    if len(val_losses) < 8:
        return None
    split = len(val_losses) * 3 // 4
    before, last = min(val_losses[:split]), min(val_losses[split:])
    drop = (before - last) / before if before > 0 else 0.0
    return drop if drop > STILL_FALLING else None


def say_if_still_learning(val_losses: list[float]) -> None:
    drop = still_falling(val_losses)
    if drop is not None:
        print(f"The validation loss was still falling: its best over the last quarter of the {len(val_losses)} "
              f"epochs trained is {drop:.0%} below the best before them. More epochs would likely give a better "
              "network, the side of focus especially: train again in a new folder with a larger --steps (or "
              "--epochs), or rerun this command with one to go on from the best checkpoint (docs/guide.md, Training).")

# --- the run ------------------------------------------------------------------------------

def start_processes(args) -> tuple[torch.device, int, int, StepOptions]:
    """Join torchrun if started by it, seed, and resolve the speed options: (device, rank, world size, options)."""
    device = init_distributed(resolve_device(args.device))
    rank, world_size = rank_and_world_size()
    for seed_function in (torch.manual_seed, random.seed, np.random.seed):
        seed_function(args.seed + rank)  # the same weights everywhere (DDP copies rank 0's), other augmentations
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
    options = step_options(args, device)
    threads = fit_threads_to_cores()
    print(f"Using device: {device}" + (f" x {world_size} processes" if world_size > 1 else "")
          + f", {threads} compute thread(s) and {loader_workers(args.num_workers)} loader process(es) "
          f"per process for {usable_cpu_count()} usable CPU core(s), mixed precision {options.amp_dtype or 'off'}, "
          f"channels_last {options.channels_last}")
    return device, rank, world_size, options


def start_or_resume(args, checkpoint, resume_from, model, optimizer, scheduler, options, train_labels):
    """(first epoch to train, the checkpoint saver): a fresh start scales the targets, a resumed run
    restores its state and continues the best rule where it was."""
    if checkpoint is None:
        model.set_target_scale(train_labels)
        print(f"Target scale from the training labels: median {model.target_center.item():+.3f}, "
              f"mean absolute deviation {model.target_scale.item():.3f} {TASKS[args.task].unit}")
        return 0, CheckpointSaver(args.ckpt_dir)
    start_epoch = restore_training_state(checkpoint, resume_from, model, optimizer, scheduler, options.scaler, args)
    saver = CheckpointSaver(args.ckpt_dir, checkpoint["best_loss"], checkpoint.get("best_epoch", start_epoch - 1))
    print(f"Resumed from {resume_from}: continuing at epoch {start_epoch}, best val loss {saver.best_loss:.4f}")
    return start_epoch, saver


def prepare_run_folder(args) -> dict:
    """The run's configuration, written to --ckpt_dir/config.json; leftovers of a crashed write removed."""
    config = run_config(args)
    args.ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_unfinished_writes(args.ckpt_dir)
    (args.ckpt_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def checkpoint_state(model, optimizer, scheduler, options, train_loss: float, train_labels, pixel_size_um: dict,
                     args) -> dict:
    """Everything a checkpoint holds but the epoch and losses CheckpointSaver adds; collective under
    torchrun (every process hands in its random state), so every process calls it."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": options.scaler.state_dict(),  # empty when the scaler is disabled (all but fp16)
            "train_loss": train_loss, "train_label_mean": float(train_labels.mean()),  # the baseline to beat
            "train_label_abs_max": float(train_labels.abs().max()),  # the range a prediction can be trusted in
            "pixel_size_um": pixel_size_um,  # per objective: the sampling the network learnt blur at
            "args": args_as_dict(args), "rng_states": gather_from_processes(rng_states())}


@contextmanager
def tensorboard_writer(log_dir: Path, purge_step: int, config: dict):
    """A SummaryWriter that starts with the run's `config` as text, closed however the run ends;
    on a full disk its last write fails with a message naming the folder rather than a traceback."""
    with writing(log_dir):
        writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        writer.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```", purge_step)
    try:
        yield writer
    finally:
        with writing(log_dir):
            writer.close()


class LoaderDiedError(UserError):
    """A DataLoader process died (the kernel's out-of-memory killer, most often)."""


@contextmanager
def last_epoch_kept(saver: CheckpointSaver, rank: int, args):
    """The epoch loop's guard: whatever ends it early (a stop signal, Ctrl-C, a loader process
    that died, an image unreadable mid-run), the last finished epoch is written first, so an
    interruption loses at most the epoch in progress."""
    try:
        yield
    except CheckpointError:
        raise  # a checkpoint write failed (a full disk): another would fail too
    except BaseException as error:
        loader_died = isinstance(error, RuntimeError) and "DataLoader worker" in str(error)
        if loader_died and hasattr(signal, "SIGCHLD"):
            # torch's handler raises again for every other loader that ends, even while the last
            # epoch is being written below
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if rank == 0:
            keep_last_finished_epoch(saver)
        if loader_died:
            raise LoaderDiedError(
                f"an image-loading process died ({message_of(error)}); the kernel's out-of-memory killer is the "
                f"usual cause. Try fewer --num_workers (this run: {args.num_workers})"
                + (" or leave out --cache_images" if args.cache_images else "")
                + ", then run the same command to resume") from error
        raise


def keep_last_finished_epoch(saver: CheckpointSaver) -> None:
    """The last finished epoch's checkpoint on disk, and where to find it."""
    try:
        path = saver.save_last_epoch()
    except CheckpointError as error:
        print(f"warning: the last finished epoch could not be kept: {error}", file=sys.stderr)
        return
    if path is not None:
        print(f"The last finished epoch ({saver.last_epoch}) is in {path}: --resume_from latest continues from it "
              f"(the same command alone resumes from the newest best, epoch {saver.best_epoch}).", file=sys.stderr)


def warn_if_space_is_short_at_start(args, model, resume_from: Path | None) -> None:
    """Before the first epoch: the free space against a checkpoint's size (the resumed one's, or the
    weights and Adam's two moments of a fresh model)."""
    size = (resume_from.stat().st_size if resume_from is not None else
            3 * sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values()))
    warn_if_space_is_short(args.ckpt_dir, size)


def fit_epoch(epoch: int, train_model, model, loaders, criterion, optimizer, device, options, args,
              one_dof: float | None) -> tuple[dict, dict]:
    """One epoch: the training steps, BatchNorm's statistics re-estimated, the split head's side
    calibrated, validation; the means of both (collective under torchrun: every process asks)."""
    train_loader, val_loader = loaders
    if isinstance(train_loader.sampler, DistributedSampler):
        train_loader.sampler.set_epoch(epoch)
    train, val = EpochTotals(one_dof), EpochTotals(one_dof)
    train_epoch(train_model, train_loader, criterion, optimizer, device, epoch, options, totals=train)
    reestimate_batchnorm(model, train_loader, device, args.bn_recalibration_batches, options)
    if args.head == "split":
        fit_side_logistic(model, val_loader, device, one_dof or float(model.target_scale), options)
    validation_epoch(model, val_loader, criterion, device, options, totals=val)
    return train.means(), val.means()


def main(args: argparse.Namespace) -> None:
    args.log_dir = args.log_dir or Path("runs") / args.task
    if args.check:
        return check_dataset(args)
    with STOP.installed():  # Ctrl-C, SIGTERM and SIGUSR1 stop the run at the next batch
        train(args)


def train(args: argparse.Namespace) -> None:
    """The training run: data, model, resuming, then the epochs with their logs and checkpoints."""
    device, rank, world_size, options = start_processes(args)
    train_set, val_set = build_datasets(args)
    train_loader, val_loader = build_loaders(args, train_set, val_set, device)
    args.epochs = epochs_for_steps(args.steps, len(train_loader), rank) if args.steps else args.epochs
    train_labels, one_dof = training_labels(train_set), one_depth_of_field(train_set, args.task)
    baseline_mae = mean_predictor_mae(train_labels, val_set)
    pixel_size_um = training_pixel_sizes(train_set, args.camera_pixel_um)

    resume_from, checkpoint = resume_checkpoint(args)
    model = build_model(args, device, options.channels_last, fresh=checkpoint is None)
    criterion = DefocusLoss(args.head)  # in the target's unit (um for soaf, DOF for moaf)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = build_scheduler(optimizer, args)
    start_epoch, saver = start_or_resume(args, checkpoint, resume_from, model, optimizer, scheduler, options,
                                         train_labels)
    if start_epoch >= args.epochs:
        length = "--steps" if args.steps else "--epochs"
        print(f"Nothing to do: {start_epoch} epochs are already trained; raise {length} to train more.")
        return
    # the training steps may run wrapped (DDP, compiled); validation, checkpoints and export use `model`
    train_model = DistributedDataParallel(model) if world_size > 1 else model
    train_model = torch.compile(train_model) if args.compile else train_model
    config = prepare_run_folder(args) if rank == 0 else None
    if rank == 0:
        warn_if_space_is_short_at_start(args, model, resume_from)

    # purge_step drops logged points at or after start_epoch, so epochs trained again after
    # resuming from an earlier best replace their old points instead of doubling them
    with (tensorboard_writer(args.log_dir, start_epoch, config) if rank == 0 else nullcontext() as writer,
          last_epoch_kept(saver, rank, args)):
        val_losses = []  # this run's, for still_falling
        for epoch in range(start_epoch, args.epochs):
            start_time = time.time()
            train, val = fit_epoch(epoch, train_model, model, (train_loader, val_loader), criterion, optimizer,
                                   device, options, args, one_dof)
            train_loss, val_loss, current_lr = train["loss"], val["loss"], optimizer.param_groups[0]["lr"]
            if writer:
                with writing(args.log_dir):  # a full disk: a message and the last epoch kept, not a traceback
                    log_epoch(writer, epoch, train, val, current_lr, baseline_mae)
                    log_validation_images(writer, epoch, args, model, val_set, device)
                    writer.flush()
            step_scheduler(scheduler, val_loss)
            save_start = time.time()
            state = checkpoint_state(model, optimizer, scheduler, options, train_loss, train_labels,
                                     pixel_size_um, args)
            saved = saver.save_epoch(epoch, val_loss, state) if rank == 0 else []
            print(f"Epoch {epoch} ({epoch + 1}/{args.epochs}) | Train Loss: {train_loss:.4f} | "
                  f"Val Loss: {val_loss:.4f} | LR: {current_lr:.2e} | Time: {time.time() - start_time:.2f}s"
                  + (f" | saved {', '.join(saved)} in {time.time() - save_start:.2f}s" if saved else ""))
            val_losses.append(val_loss)
            if out_of_patience(epoch, saver.best_epoch, args.patience):
                print(f"Stopping early: the validation loss has not improved for {args.patience} epochs "
                      f"(best {saver.best_loss:.4f} at epoch {saver.best_epoch}).")
                break
            STOP.check()  # a signal during validation or the save stops here, the epoch kept
    if rank == 0:
        say_if_still_learning(val_losses)


if __name__ == "__main__":
    run(main, cli_args, "Stopped. Checkpoints written so far are complete; rerun the same command to resume.")
    leave_distributed()
