"""The processes and cores a run uses: torchrun's process group, sums and gathers across its
processes, compute threads and loader processes fitted to the cores, the device, progress bars,
and the signals that stop a run (Ctrl-C, a scheduler's SIGTERM or SIGUSR1).
"""
import builtins
import os
import signal
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .cli import progress_bar, usable_cpu_count


# the signals that stop a run at the next batch: Ctrl-C, and what SLURM, docker stop and other
# schedulers send before they kill a job (SLURM's --signal sends SIGUSR1)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class RunStopped(KeyboardInterrupt):
    """A stop signal arrived; the run stopped between batches. `exit_status` is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.exit_status = signum, 128 + signum


class StopRequests:
    """Handlers for STOP_SIGNALS that ask the run to stop at the next batch, so that nothing is
    cut off in the middle of a step or a write. A second Ctrl-C stops at once.

    Installed explicitly, they also serve runs started in the background (`nohup ... &`), which
    inherit SIGINT as ignored. Under torchrun the processes agree before they stop (`check` is
    then collective), so that none waits forever in a collective the others have left.
    """

    def __init__(self):
        self.signum = None

    @contextmanager
    def installed(self):
        """The handlers in place for the run, the process's own ones back afterwards."""
        self.signum = None
        previous = {signum: signal.signal(signum, self.request) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def request(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping at the next batch (Ctrl-C again stops at once)",
              file=sys.stderr, flush=True)

    def check(self) -> None:
        """Raise RunStopped if a stop was requested (in any torchrun process)."""
        signum = self.signum or 0
        if rank_and_world_size()[1] > 1:
            anyone = sum_over_processes(torch.tensor([float(signum)])).item() > 0
            signum = signum or (signal.SIGTERM if anyone else 0)
        if signum:
            raise RunStopped(signum)


STOP = StopRequests()  # the one set of handlers of this process; engine.py asks it between batches


def ignore_stop_signals() -> None:
    """For loader processes: the main process stops the run and ends them; a signal that killed
    one first would read as a loader that died."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def resolve_device(name: str) -> torch.device:
    """--device: "auto" is the GPU if there is one, else the CPU; any other name as torch reads it."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


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


def leave_distributed() -> None:
    """Leave torchrun's process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


def progress(items, description: str):
    """A progress bar that clears when done; silent when the output is no terminal (logs, CI)
    and on every torchrun process but the first."""
    return progress_bar(items, description, "batch", disable=None if rank_and_world_size()[0] == 0 else True)
