"""Checkpoint files: crash-safe writing, safe reading, finding the newest, random-number states.

A checkpoint is one dict of tensors and plain values, so it loads with
torch.load(path, weights_only=True); myTrain.py decides what goes in and when it is written.
"""
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

BEST_CHECKPOINT = re.compile(r"ckpt_best_(\d+)\.pt")
ANY_CHECKPOINT = re.compile(r"ckpt_(?:best_)?(\d+)\.pt")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the requested run."""


def checkpoints_newest_first(ckpt_dir: Path, best_only: bool) -> list[Path]:
    """ckpt_best_<epoch>.pt (and with best_only=False also ckpt_<epoch>.pt), highest epoch first.

    At equal epochs the best file comes first; both hold the same state.
    """
    pattern = BEST_CHECKPOINT if best_only else ANY_CHECKPOINT
    found = [(int(m.group(1)), p.name.startswith("ckpt_best_"), p) for p in ckpt_dir.glob("ckpt_*.pt")
             if (m := pattern.fullmatch(p.name))]
    return [path for _, _, path in sorted(found, reverse=True)]


def find_best_checkpoint(ckpt_dir: Path) -> Path | None:
    """The ckpt_best_<epoch>.pt with the highest epoch in ckpt_dir, or None."""
    best = checkpoints_newest_first(ckpt_dir, best_only=True)
    return best[0] if best else None


def save_atomically(state: dict, path: Path) -> None:
    """Write to a temporary file, flush it to disk, then rename: no half-written checkpoint ever has a final name."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
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


def rng_states() -> dict:
    """Every random-number state a resumed run needs, as tensors and plain values (weights_only)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
    }


def restore_rng_states(states: dict) -> None:
    """Undo rng_states(); the states are set on the CPU whatever device the checkpoint was mapped to."""
    torch.set_rng_state(states["torch"].cpu())
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))


def remove_unfinished_writes(ckpt_dir: Path) -> None:
    """Delete temporary files left by a checkpoint write that a crash interrupted."""
    for leftover in ckpt_dir.glob("ckpt_*.pt.tmp"):
        print(f"Removing {leftover}, an unfinished checkpoint write")
        leftover.unlink()
