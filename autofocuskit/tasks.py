"""The two tasks, what differs between them (dataset, model, unit, CSV glob), and a task's
datasets and loaders as the training and test scripts build them.

    task = TASKS["moaf"]
    dataset = build_dataset(args, "val", transform)   # with the script's glob, size and path rules
"""
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from .imaging import IMAGE_SIZE
from .datasets import MOAFDataset, SOAFDataset
from .networks import MOAFModel, SOAFModel
from .processes import ignore_stop_signals, loader_workers, rank_and_world_size
from .schema import MOAF_GLOB, SOAF_GLOB, TASK_UNITS


@dataclass(frozen=True)
class Task:
    """What differs between the two tasks; the training loop is the same."""

    dataset: type
    model: type
    unit: str  # of the target, the predictions and the loss
    default_glob: str  # CSV files used in each split unless --glob says otherwise


TASKS = {
    "soaf": Task(SOAFDataset, SOAFModel, unit=TASK_UNITS["soaf"], default_glob=SOAF_GLOB),
    "moaf": Task(MOAFDataset, MOAFModel, unit=TASK_UNITS["moaf"], default_glob=MOAF_GLOB),
}


def build_dataset(args, split: str, transform, task: str | None = None, glob: str | None = None):
    """One split of the task's dataset with the script's image-size and path rules."""
    task = task or args.task
    return TASKS[task].dataset(args.root_dir, split, transform, glob or args.glob or TASKS[task].default_glob,
                               allow_outside_root=args.allow_outside_root, image_size=(IMAGE_SIZE, IMAGE_SIZE),
                               bit_depth=args.bit_depth)


def start_worker(worker_id: int) -> None:
    """Start a DataLoader worker: stop signals are the main process's to act on, and NumPy and
    random are seeded from the worker's torch seed, which the loader derives from the main
    process's torch RNG, so that workers differ from each other and repeat between runs."""
    ignore_stop_signals()
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


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
        worker_init_fn=start_worker,
    )
