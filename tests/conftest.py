"""Shared fixtures (generated datasets, focus stacks, a camera frame, an exported model) and helpers to
run the scripts as a user would. Tests marked `slow` run the scripts end to end in subprocesses or
train for many epochs; `pytest -m "not slow"` leaves them out."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autofocuskit.error_model import ErrorModel  # noqa: E402
from autofocuskit.exported_model import (IMAGE_INPUT, OBJECTIVE_INPUT, SIGNED_OUTPUT, ModelMetadata,  # noqa: E402
                                         write_metadata)
from autofocuskit.imaging import IMAGE_SIZE  # noqa: E402
from autofocuskit.optics import VirtualMicroscope  # noqa: E402
from make_demo_data import make_demo_dataset, write_demo_stacks  # noqa: E402

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
    """A run folder with the README's from-scratch recipe (30 epochs here, a quarter of its steps,
    to keep the suite short) and the split head on learning_root, tested by myTest.py: .ckpts/ and
    .onnx/ inside. Trained once for every test that needs a network that has learnt something; the
    images decoded once (--cache_images), as the same run loading them every epoch trains the same weights."""
    import myTrain
    from myTest import get_args_parser as get_test_args_parser, main as test_main

    folder = tmp_path_factory.mktemp("trained_split")
    in_folder(folder, myTrain.main, myTrain.get_args_parser().parse_args(
        [str(arg) for arg in ("--root_dir", learning_root, *SCRATCH_RECIPE, "--head", "split", "--epochs", "30",
                              "--num_workers", "0", "--cache_images")]))
    in_folder(folder, test_main, get_test_args_parser().parse_args(
        ["--root_dir", str(learning_root), "--num_workers", "0", "--warmup", "0"]))
    return folder


@pytest.fixture(scope="session")
def stacks(tmp_path_factory) -> Path:
    """The demo focus stacks of make_demo_data.py, with their true focus in truth.csv."""
    return write_demo_stacks(tmp_path_factory.mktemp("stacks"))


def untrained_onnx(path: Path, metadata: ModelMetadata | None = None, moaf: bool = False, seed: int = 0) -> Path:
    """A small untrained network with the exported model's inputs and outputs (a strided
    convolution, ReLU, global average, a linear layer; MOAF adds the objective linearly),
    built with onnx alone so that the tests of the deploy side load no torch; `metadata`
    written by the one contract (exported_model.write_metadata)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {"conv_w": rng.normal(0, 0.5, (8, 3, 5, 5)), "conv_b": rng.normal(0, 0.1, 8),
               "fc_w": rng.normal(0, 4.0, (8, 1)), "fc_b": np.array([0.5])}
    nodes = [helper.make_node("Conv", [IMAGE_INPUT, "conv_w", "conv_b"], ["conv"], strides=[4, 4]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["features"]),
             helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["image_part" if moaf else SIGNED_OUTPUT])]
    inputs = [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])]
    if moaf:
        weights["objective_w"] = np.array([[0.05], [1.0]])
        nodes += [helper.make_node("MatMul", [OBJECTIVE_INPUT, "objective_w"], ["objective_part"]),
                  helper.make_node("Add", ["image_part", "objective_part"], [SIGNED_OUTPUT])]
        inputs.append(helper.make_tensor_value_info(OBJECTIVE_INPUT, TensorProto.FLOAT, ["N", 2]))
    graph = helper.make_graph(
        nodes, "untrained", inputs, [helper.make_tensor_value_info(SIGNED_OUTPUT, TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    if metadata is not None:
        write_metadata(path, metadata)
    return path


@pytest.fixture(scope="session")
def soaf_onnx(tmp_path_factory) -> Path:
    """An untrained SOAF model as myTest.py exports it, trained range +-40 um, with an error model."""
    return untrained_onnx(tmp_path_factory.mktemp("focus") / "soaf.onnx",
                          ModelMetadata(label_abs_max=40.0, error_model=ErrorModel.conservative(40.0)))


@pytest.fixture(scope="session")
def model_10x(tmp_path_factory):
    """An untrained SOAF model whose file records 10x/0.3 at 0.65 um pixels, as myTest.py writes it."""
    metadata = ModelMetadata(label_abs_max=40.0, pixel_size_um={"10x/0.3": 0.65},
                             error_model=ErrorModel.conservative(40.0))
    return untrained_onnx(tmp_path_factory.mktemp("mm") / "soaf.onnx", metadata)


def slide_10x(**options):
    """The demo microscope's slide at 10x/0.3, 448-pixel frames."""
    from autofocuskit.demo_microscope import DemoSlide

    return DemoSlide(10, 0.3, **{"size": 448, **options})


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


STARTED: list[subprocess.Popen] = []  # the scripts the running test started


@pytest.fixture(autouse=True)
def no_script_left_running():
    """A test that fails midway (a timeout, a signal that did not stop a 50-epoch run) leaves
    no script it started running on beside the next tests."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def start_script(script: str, *args, cwd: Path, **popen_options) -> subprocess.Popen:
    """One of the project's scripts started in `cwd`, its output piped. Scripts that do not depend
    on each other can run side by side: most of a short run is importing torch, on one core."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_options)
    STARTED.append(process)
    return process


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """A started script run to its end (killed after `timeout` seconds), with its output."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_script(script: str, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one of the project's scripts in `cwd` and capture its output."""
    return finish(start_script(script, *args, cwd=cwd), timeout)


def train_in_process(folder, *args, capsys) -> str:
    """myTrain.py's main run in this process, in `folder` (no interpreter start-up); what it printed."""
    import myTrain

    in_folder(folder, myTrain.main, myTrain.get_args_parser().parse_args([str(arg) for arg in args]))
    return capsys.readouterr().out


def scalar_steps(log_dir, tag="Loss/train") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]
