"""processes.py: a stop signal asks the run to stop at the next batch with 128 + the signal, a second
Ctrl-C stops at once, the process's own handlers come back; compute threads and loader processes fit
the cores the job may use."""
import os
import signal

import pytest
import torch

from autofocuskit.cli import usable_cpu_count
from autofocuskit.processes import STOP, RunStopped, fit_threads_to_cores, loader_workers


def test_a_stop_signal_stops_at_the_next_check_with_its_exit_status():
    before = signal.getsignal(signal.SIGTERM)
    with STOP.installed():
        STOP.check()  # nothing asked yet
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(RunStopped) as stopped:
            STOP.check()
    assert stopped.value.exit_status == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_second_ctrl_c_stops_at_once():
    with STOP.installed():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_threads_and_loader_processes_fit_the_usable_cores():
    threads = torch.get_num_threads()
    try:
        assert fit_threads_to_cores() <= usable_cpu_count()
        assert loader_workers(64) == usable_cpu_count() and loader_workers(0) == 0
    finally:
        torch.set_num_threads(threads)
