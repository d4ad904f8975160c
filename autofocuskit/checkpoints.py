"""Checkpoint files: the saving rules of a run, crash-safe writing, safe reading, resuming.

    saver = CheckpointSaver(Path(".ckpts"))
    saved = saver.save_epoch(epoch, val_loss, state)   # once per epoch: regular schedule and best rule
    saver.save_last_epoch()                            # on an interruption: the last finished epoch too
    path, checkpoint = checkpoint_to_resume(Path(".ckpts"), "best")

A checkpoint is one dict of tensors and plain values, so it loads with
torch.load(path, weights_only=True). File names carry the epoch, counted from 0 and
zero-padded so that names sort: ckpt_0010.pt (regular), ckpt_best_0012.pt (best).
"""
import errno
import io
import math
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import UserError, free_mib

BEST_CHECKPOINT = re.compile(r"ckpt_best_(\d+)\.pt")
ANY_CHECKPOINT = re.compile(r"ckpt_(?:best_)?(\d+)\.pt")


KEEP_FREE_CHECKPOINTS = 3  # warn when the checkpoint folder has room for fewer checkpoints than this


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be read or written, or does not fit the requested run."""


def is_regular_checkpoint_epoch(epoch: int) -> bool:
    """The regular saving schedule: every 10th epoch below 200, 5th below 400, 3rd below 600, then all."""
    if epoch < 200:
        return epoch % 10 == 0
    if epoch < 400:
        return epoch % 5 == 0
    if epoch < 600:
        return epoch % 3 == 0
    return True


class CheckpointSaver:
    """Both saving rules of a run, applied once per epoch by `save_epoch`.

    - Regular: ckpt_<epoch>.pt on the schedule of `is_regular_checkpoint_epoch`.
    - Best: ckpt_best_<epoch>.pt whenever the validation loss improved; the previous best
      file is removed once the new one is safely written, so one best exists at a time.
    The rules are independent: an epoch can be both. `best_loss` and `best_epoch` go into
    every saved state, so a resumed run continues the best rule where it was.

    The last finished epoch's checkpoint is also kept in memory, serialised (as many bytes
    as one checkpoint file), so that an interrupted run loses at most the epoch in
    progress: `save_last_epoch` writes it as ckpt_<epoch>.pt.
    """

    def __init__(self, ckpt_dir: Path, best_loss: float = math.inf, best_epoch: int = -1):
        self.ckpt_dir = Path(ckpt_dir)
        self.best_loss, self.best_epoch = best_loss, best_epoch
        self.last_epoch, self.last_checkpoint = None, None  # the epoch and its serialised checkpoint

    def save_epoch(self, epoch: int, val_loss: float, state: dict) -> list[str]:
        """Apply both rules to the state after `epoch`; return the names of the files written."""
        is_best = val_loss < self.best_loss
        if is_best:
            self.best_loss, self.best_epoch = val_loss, epoch
        state = {**state, "epoch": epoch, "val_loss": val_loss, "best_loss": self.best_loss,
                 "best_epoch": self.best_epoch}
        self.last_epoch, self.last_checkpoint = epoch, serialize(state)
        saved = []
        if is_regular_checkpoint_epoch(epoch):
            saved.append(write_atomically(self.last_checkpoint, self.ckpt_dir / f"ckpt_{epoch:04d}.pt"))
        if is_best:
            best_path = write_atomically(self.last_checkpoint, self.ckpt_dir / f"ckpt_best_{epoch:04d}.pt")
            for old_best in self.ckpt_dir.glob("ckpt_best_*.pt"):
                if old_best != best_path:
                    old_best.unlink()  # only after the new best is safely in place
            saved.append(best_path)
        if saved:
            warn_if_space_is_short(self.ckpt_dir, len(self.last_checkpoint))
        return [path.name for path in saved]

    def save_last_epoch(self) -> Path | None:
        """The checkpoint of the last finished epoch on disk: written as ckpt_<epoch>.pt unless a
        file of that epoch exists already; None before the first epoch has finished."""
        if self.last_epoch is None:
            return None
        regular, best = (self.ckpt_dir / f"ckpt_{kind}{self.last_epoch:04d}.pt" for kind in ("", "best_"))
        for path in (regular, best):
            if path.is_file():
                return path
        return write_atomically(self.last_checkpoint, regular)


def serialize(state: dict) -> bytes:
    """A checkpoint as the bytes torch.save writes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_atomically(state: dict, path: Path) -> Path:
    """torch.save with write_atomically's guarantees."""
    return write_atomically(serialize(state), path)


def write_atomically(data: bytes, path: Path) -> Path:
    """Write to a temporary file, flush it to disk, rename, then flush the folder: no
    half-written checkpoint ever has a final name, and the new name survives a power cut.
    A write that fails (a full disk) removes its temporary file at once and raises
    CheckpointError saying what was needed, what is free and which checkpoint is intact."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:  # a full disk, or an interruption mid-write
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CheckpointError(write_failure_message(path, len(data), error)) from error
        raise
    fsync_folder(path.parent)
    return path


def write_failure_message(path: Path, size: int, error: OSError) -> str:
    """What a failed checkpoint write says: the file, the space it needs and the space free, the
    newest intact checkpoint, and how to go on."""
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    newest = checkpoints_newest_first(path.parent, best_only=False)
    intact = f"the newest intact checkpoint is {newest[0].name}" if newest else "no checkpoint was written yet"
    return (f"cannot write {path} ({error.strerror}): it needs {size / 2**20:.1f} MiB and "
            f"{free_mib(path.parent):.1f} MiB are free there. Nothing written before was changed; {intact}. "
            + ("Free some space and run the same command to resume." if full else
               "Fix the folder and run the same command to resume."))


def warn_if_space_is_short(folder: Path, checkpoint_bytes: int) -> None:
    """A warning when the folder has room for fewer than KEEP_FREE_CHECKPOINTS more checkpoints."""
    free, size = free_mib(folder), checkpoint_bytes / 2**20
    if free < KEEP_FREE_CHECKPOINTS * size:
        print(f"warning: {free:.1f} MiB free in {folder}, room for {int(free // size)} more checkpoint(s) of "
              f"{size:.1f} MiB; free some space before the run fills it", file=sys.stderr)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; where folders cannot be opened (Windows), nothing."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint onto the CPU; only tensors and plain values are accepted (weights_only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a checkpoint written by myTrain.py")
    return checkpoint


def checkpoint_to_resume(ckpt_dir: Path, resume_from: str) -> tuple[Path | None, dict | None]:
    """The checkpoint to continue from, read: with "best" the newest ckpt_best_*.pt, with
    "latest" the newest checkpoint of either kind; (None, None) if there is none.

    A file that cannot be read (truncated by a crash, say) is skipped with a warning for
    the next newest checkpoint of either kind, so that the least work is lost.
    """
    candidates = checkpoints_newest_first(ckpt_dir, best_only=resume_from == "best")[:1]
    candidates += [path for path in checkpoints_newest_first(ckpt_dir, best_only=False) if path not in candidates]
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            print(f"warning: {error}; trying the next newest checkpoint", file=sys.stderr)
    return None, None


def check_nothing_is_overwritten(ckpt_dir: Path, resume_from: Path | None, reason: str) -> None:
    """Refuse to start from scratch over existing checkpoints: that would overwrite them."""
    existing = sorted(ckpt_dir.glob("ckpt_*.pt"))
    if resume_from is None and existing:
        raise CheckpointError(
            f"{ckpt_dir} already holds {len(existing)} checkpoint(s) and {reason}; starting over "
            "would overwrite them. Use another --ckpt_dir (and --log_dir), or move them away.")


def rng_states() -> dict:
    """Every random-number state of this process, as tensors and plain values (weights_only)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
    }


def restore_rng_states(states: dict | list[dict], rank: int = 0) -> None:
    """Undo rng_states(). `states` is one process's dict or, from a torchrun run, one per rank:
    each process takes its own, so that resumed processes keep drawing different augmentations."""
    if isinstance(states, list):
        if rank >= len(states):
            print(f"warning: the checkpoint holds random states of {len(states)} processes; process {rank} "
                  "takes those of process 0", file=sys.stderr)
        states = states[rank if rank < len(states) else 0]
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
