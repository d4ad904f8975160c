"""Shared fixtures (generated datasets, focus stacks, a camera frame, an exported model) and helpers to
run the scripts as a user would. Tests marked `slow` run the scripts end to end in subprocesses or
train for many epochs; `pytest -m "not slow"` leaves them out."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import myTrain  # noqa: E402
import torch  # noqa: E402
from error_model import ErrorModel  # noqa: E402
from make_demo_data import make_demo_dataset, write_demo_stacks  # noqa: E402
from myModel import SOAFModel, export_onnx  # noqa: E402
from myTest import get_args_parser as get_test_args_parser, main as test_main  # noqa: E402
from optics import VirtualMicroscope  # noqa: E402

FAST = ("--no-pretrained", "--num_workers", "0", "--batch_size", "8", "--lr", "1e-4")  # a quick run
SCRATCH_RECIPE = ("--no-pretrained", "--lr", "1e-3", "--batch_size", "16", "--dropout", "0", "--scheduler", "cosine",
                  "--warmup_epochs", "1")  # as in README


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs scripts end to end or trains for many epochs")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Demo data for both objectives: 16 training, 8 validation and 8 test images each."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_train=16, n_val=8, n_test=8, seed=0)


@pytest.fixture(scope="session")
def learning_root(tmp_path_factory) -> Path:
    """10x/0.3 demo data: 192 training, 32 validation and 64 test images."""
    return make_demo_dataset(tmp_path_factory.mktemp("learning"), n_train=192, n_val=32, n_test=64, seed=0,
                             objectives=((10.0, 0.3),))


@pytest.fixture(scope="session")
def trained_split_run(tmp_path_factory, learning_root) -> Path:
    """A run folder with the README's from-scratch recipe (30 epochs) and the split head on
    learning_root, tested by myTest.py: .ckpts/ and .onnx/ inside. Trained once for every test
    that needs a network that has learnt something."""
    folder = tmp_path_factory.mktemp("trained_split")
    in_folder(folder, myTrain.main, myTrain.get_args_parser().parse_args(
        [str(arg) for arg in ("--root_dir", learning_root, *SCRATCH_RECIPE, "--head", "split", "--epochs", "30",
                              "--num_workers", "0")]))
    in_folder(folder, test_main, get_test_args_parser().parse_args(
        ["--root_dir", str(learning_root), "--num_workers", "0", "--warmup", "0"]))
    return folder


@pytest.fixture(scope="session")
def stacks(tmp_path_factory) -> Path:
    """The demo focus stacks of make_demo_data.py, with their true focus in truth.csv."""
    return write_demo_stacks(tmp_path_factory.mktemp("stacks"))


@pytest.fixture(scope="session")
def soaf_onnx(tmp_path_factory) -> Path:
    """An untrained SOAF model exported as myTest.py exports, trained range +-40 um, with an error model."""
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False).eval()
    return export_onnx(model, tmp_path_factory.mktemp("focus") / "soaf.onnx",
                       {"label_abs_max": "40.0", "error_model": ErrorModel.conservative(40.0).to_metadata()})


@pytest.fixture(scope="session")
def tissue_frame():
    """A 512x512 camera frame of tissue at 10x/0.3, 8 um from focus."""
    return VirtualMicroscope(10, 0.3, size=512, defocus_um=8.0, seed=1).acquire()


def in_folder(folder: Path, function, *args):
    """function(*args) with `folder` as the working directory."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        return function(*args)
    finally:
        os.chdir(previous)


def run_script(script: str, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one of the project's scripts in `cwd` and capture its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def train_in_process(folder, *args, capsys) -> str:
    """myTrain.py's main run in this process, in `folder` (no interpreter start-up); what it printed."""
    in_folder(folder, myTrain.main, myTrain.get_args_parser().parse_args([str(arg) for arg in args]))
    return capsys.readouterr().out


def scalar_steps(log_dir, tag="Loss/train") -> list[int]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]
