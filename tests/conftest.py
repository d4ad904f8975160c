"""Shared fixtures: a small generated dataset and helpers to run the scripts as a user would."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import myTrain  # noqa: E402
from make_demo_data import make_demo_dataset  # noqa: E402

FAST = ("--no-pretrained", "--num_workers", "0", "--batch_size", "8", "--lr", "1e-4")  # a quick run
SCRATCH_RECIPE = ("--no-pretrained", "--lr", "1e-3", "--batch_size", "16", "--dropout", "0", "--scheduler", "cosine",
                  "--warmup_epochs", "1")  # as in README


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Demo data for both objectives: 16 training, 8 validation and 8 test images each."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_train=16, n_val=8, n_test=8, seed=0)


def run_script(script: str, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one of the project's scripts in `cwd` and capture its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def train_in_process(folder, *args, capsys) -> str:
    """myTrain.py's main run in this process, in `folder` (no interpreter start-up); what it printed."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        myTrain.main(myTrain.get_args_parser().parse_args([str(arg) for arg in args]))
    finally:
        os.chdir(previous)
    return capsys.readouterr().out


def scalar_steps(log_dir, tag="Loss/train") -> list[int]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]
