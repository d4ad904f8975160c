"""What the scripts share: the task table, command-line pieces, datasets and loaders, devices
and torchrun, batches on the device, progress bars and the script runner.

myTrain.py, myTest.py and bench.py build on this module; the epoch functions live in
engine.py, the checkpoint files and their saving rules in checkpoints.py.
"""
import argparse
import builtins
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from checkpoints import CheckpointError
from imaging import IMAGE_SIZE
from myDataset import MOAF_GLOB, SOAF_GLOB, DatasetError, MOAFDataset, SOAFDataset
from myModel import ModelCreationError, MOAFModel, SOAFModel


@dataclass(frozen=True)
class Task:
    """What differs between the two tasks; the training loop is the same."""

    dataset: type
    model: type
    unit: str  # of the target, the predictions and the loss
    default_glob: str  # CSV files used in each split unless --glob says otherwise


TASKS = {
    "soaf": Task(SOAFDataset, SOAFModel, unit="um", default_glob=SOAF_GLOB),
    "moaf": Task(MOAFDataset, MOAFModel, unit="DOF", default_glob=MOAF_GLOB),
}


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
                             f"{SOAF_GLOB!r} for soaf and {MOAF_GLOB!r} for moaf, myTest.py the checkpoint's)")
    parser.add_argument("--batch_size", type=positive(int), default=32, help="images per batch (default: %(default)s)")
    parser.add_argument("--num_workers", type=positive(int, allow_zero=True), default=8,
                        help="image-loading processes, capped at the CPU cores this job may use "
                             "(default: %(default)s)")
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


def sum_over_processes(sums: torch.Tensor) -> torch.Tensor:
    """`sums` added up over all torchrun processes, in float64 on the CPU."""
    sums = sums.double()
    if rank_and_world_size()[1] > 1:
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"  # NCCL: GPU only
        sums = sums.to(device)
        dist.all_reduce(sums)
    return sums.cpu()


def gather_from_processes(value) -> list:
    """[value] of every torchrun process, in rank order (collective: every process must call it);
    [value] outside torchrun."""
    world_size = rank_and_world_size()[1]
    if world_size == 1:
        return [value]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def build_dataset(args, split: str, transform, task: str | None = None, glob: str | None = None):
    """One split of the task's dataset with the script's image-size and path rules."""
    task = task or args.task
    return TASKS[task].dataset(args.root_dir, split, transform, glob or args.glob or TASKS[task].default_glob,
                               allow_outside_root=args.allow_outside_root, image_size=(IMAGE_SIZE, IMAGE_SIZE))


def usable_cpu_count() -> int:
    """The CPU cores this process may run on (taskset, cgroup cpusets, SLURM), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


def args_as_dict(args: argparse.Namespace) -> dict:
    """The arguments as plain values (paths as text), for config.json and checkpoints (weights_only)."""
    return {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}


def cores_per_process() -> int:
    """This process's share of the cores the job may use: all of them, or 1/world_size under torchrun."""
    return max(1, usable_cpu_count() // rank_and_world_size()[1])


def loader_workers(requested: int) -> int:
    """--num_workers capped at this process's share of the usable cores: more loader processes
    than cores only take turns with each other and with the training threads."""
    return min(requested, cores_per_process())


def fit_threads_to_cores() -> int:
    """Compute threads at most this process's share of the usable cores; returns the number.

    torch's default counts the machine's cores, which over-subscribes a job confined to
    fewer (taskset, cgroup cpusets, SLURM --cpus-per-task), and several torchrun processes
    on one CPU. A lower count set by OMP_NUM_THREADS is kept.
    """
    torch.set_num_threads(min(torch.get_num_threads(), cores_per_process()))
    return torch.get_num_threads()


def build_loader(dataset, batch_size: int, num_workers: int, device: torch.device, shuffle: bool,
                 seed: int = 0) -> DataLoader:
    """A DataLoader whose CUDA-only and worker-only options are set only where they apply.

    Under torchrun each process reads its own share of the images: the training set through
    a DistributedSampler (call `loader.sampler.set_epoch(epoch)` for a new order every
    epoch), other splits as every world_size-th image, so that no image is counted twice.
    """
    rank, world_size = rank_and_world_size()
    num_workers = loader_workers(num_workers)
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


def progress(loader, description: str) -> tqdm:
    """A batch progress bar that clears when done; silent when the output is no terminal (logs,
    CI) and on every torchrun process but the first."""
    disable = None if rank_and_world_size()[0] == 0 else True
    return tqdm(loader, desc=description, leave=False, disable=disable, unit="batch", dynamic_ncols=True)


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
    except (DatasetError, ModelCreationError, CheckpointError, FloatingPointError) as error:
        # FloatingPointError: engine.NonFiniteLossError, a NaN or infinite loss
        raise SystemExit(f"error: {message_of(error)}")
