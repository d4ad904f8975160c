"""What every script shares at its edges, without torch (so that --help answers at once):
argument types, the arguments of the training and test scripts' data, the CPU cores the
job may use, and running `main` so that a user's mistake ends with a message, not a traceback.
"""
import argparse
import math
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (a file, an argument, a checkpoint); scripts print its message."""


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


def usable_cpu_count() -> int:
    """The CPU cores this process may run on (taskset, cgroup cpusets, SLURM), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


def free_mib(folder: Path) -> float:
    """The space left on the file system of `folder`, in MiB."""
    return shutil.disk_usage(folder).free / 2**20


@contextmanager
def writing(path: Path):
    """Around the writing of `path`: an OSError (a full disk, a folder that cannot be written)
    becomes a UserError that names the file and the space left."""
    try:
        yield
    except OSError as error:
        if isinstance(error, UserError):  # an image that cannot be read, say: it names itself
            raise
        folder = next((parent for parent in (Path(path), *Path(path).parents) if parent.is_dir()), Path("."))
        raise UserError(f"cannot write {path} ({error.strerror or error}); "
                        f"{free_mib(folder):.1f} MiB are free in {folder}") from error


def message_of(error: Exception) -> str:
    """The error's own message; errors re-raised from DataLoader workers carry a traceback, keep its last line."""
    text = str(error).strip()
    if text.startswith("Caught "):
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def run(main_function, args, interrupted: str = "Interrupted.") -> None:
    """Run a script's main; a UserError ends with its message and exit code 1, Ctrl-C (or another
    stop signal) with the `interrupted` line and 128 + the signal."""
    try:
        main_function(args)
    except KeyboardInterrupt as error:  # Ctrl-C, or processes.RunStopped with the signal's status
        print(f"\n{interrupted}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_status", 130))
    except UserError as error:
        raise SystemExit(f"error: {message_of(error)}")


def progress_bar(items, description: str, unit: str, total: int | None = None, disable: bool | None = None):
    """A progress bar that clears when done; silent when the output is no terminal (logs, CI)."""
    from tqdm import tqdm  # here, so that --help answers without it

    return tqdm(items, desc=description, total=total, leave=False, unit=unit, dynamic_ncols=True, disable=disable)


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The data, loader and device arguments myTrain.py and myTest.py share."""
    parser.add_argument("--root_dir", type=Path, required=True,
                        help="dataset root holding .train/ .val/ .test/ and the images")
    parser.add_argument("--batch_size", type=positive(int), default=32, help="images per batch (default: %(default)s)")
    parser.add_argument("--num_workers", type=positive(int, allow_zero=True), default=8,
                        help="image-loading processes, capped at the CPU cores this job may use "
                             "(default: %(default)s)")
    parser.add_argument("--ckpt_dir", type=Path, default=Path(".ckpts"),
                        help="checkpoint folder (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="torch device, e.g. cuda:1 or cpu; auto: the GPU if there is one (default: %(default)s)")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC memory layout: faster convolutions on tensor-core GPUs and with "
                             "oneDNN on CPUs (default: %(default)s)")
    add_bit_depth_argument(parser)
    parser.add_argument("--allow_outside_root", action="store_true",
                        help="accept image paths that are absolute or leave root_dir with '..' (default: refuse)")
    return parser


def add_bit_depth_argument(parser: argparse.ArgumentParser) -> None:
    """--bit_depth, for 16-bit images a file cannot say are from a 10-14 bit camera."""
    parser.add_argument("--bit_depth", type=bit_depth, default=None,
                        help="the camera's bits per pixel, for 10-14 bit cameras that write 16-bit files: their "
                             "largest value becomes white (default: the file's own, 65535 in a 16-bit file)")


def bit_depth(text: str) -> int:
    value = positive(int)(text)
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"a bit depth is 1 to 16, got {value}")
    return value


def args_as_dict(args: argparse.Namespace) -> dict:
    """The arguments as plain values (paths as text), for config.json and checkpoints (weights_only)."""
    return {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}
