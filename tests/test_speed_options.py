"""Speed options give the same results as the plain path: mixed precision, channels_last,
the in-memory image cache, torchrun with two processes, and int8 ONNX."""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from checkpoints import find_best_checkpoint, load_checkpoint
from common import StepOptions, augment_batch, build_loader
from conftest import FAST, ROOT, run_script
from engine import train_epoch, validation_epoch
from myDataset import SOAFDataset
from myModel import SOAFModel, export_onnx, quantize_onnx
from myTest import calibration_feeds, onnx_session


def small_loader(demo_root):
    """One batch of 8 training images."""
    dataset = Subset(SOAFDataset(demo_root, "train"), range(8))
    return build_loader(dataset, batch_size=8, num_workers=0, device=torch.device("cpu"), shuffle=False)


def validate_then_train(demo_root, options: StepOptions) -> tuple[float, float]:
    """(validation loss at initialisation, loss of one training epoch), from the same start every time."""
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False)
    model.set_target_scale(torch.tensor([-20.0, 0.0, 20.0]))
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = small_loader(demo_root)
    val_loss = validation_epoch(model, loader, nn.L1Loss(), torch.device("cpu"), options)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    train_loss = train_epoch(model, loader, nn.L1Loss(), optimizer, torch.device("cpu"), 0, options)
    return val_loss, train_loss


@pytest.fixture(scope="module")
def fp32_losses(demo_root) -> tuple[float, float]:
    return validate_then_train(demo_root, StepOptions())


@pytest.mark.parametrize("options, tolerance", [
    (StepOptions(channels_last=True), 1e-4),
    (StepOptions(amp_dtype=torch.bfloat16), 0.05),
    (StepOptions(amp_dtype=torch.float16, scaler=torch.amp.GradScaler("cpu")), 0.05),
])
def test_step_options_agree_with_fp32(demo_root, fp32_losses, options, tolerance):
    fp32_val, fp32_train = fp32_losses
    option_val, option_train = validate_then_train(demo_root, options)
    assert option_val == pytest.approx(fp32_val, rel=tolerance)
    assert option_train == pytest.approx(fp32_train, rel=tolerance)


def test_image_cache_gives_the_same_images(demo_root, capsys):
    plain = SOAFDataset(demo_root, "train")
    cached = SOAFDataset(demo_root, "train")
    megabytes = cached.cache_images()
    assert megabytes == pytest.approx(len(cached) * 224 * 224 * 3 / 2**20)
    for index in (0, len(plain) - 1):
        assert torch.equal(plain[index][0], cached[index][0])
        assert torch.equal(plain[index][1], cached[index][1])


def dihedral_views(image: torch.Tensor) -> list[torch.Tensor]:
    """The eight rotations and mirrorings of a square (C, H, W) image."""
    views = []
    for turned in (image, image.transpose(-1, -2)):
        views += [turned, turned.flip(-1), turned.flip(-2), turned.flip(-1).flip(-2)]
    return views


def test_augmentation_only_turns_mirrors_and_rescales_intensity(demo_root):
    images = torch.stack([SOAFDataset(demo_root, "train")[index][0] for index in range(8)])
    torch.manual_seed(0)
    augmented = augment_batch(images)
    assert augmented.shape == images.shape and augmented.dtype == torch.float32
    assert 0.0 <= augmented.min() and augmented.max() <= 1.0
    turned = 0
    for image, result in zip(images, augmented):
        # brightness and contrast are affine in intensity: one view matches with correlation 1
        unclipped = (result > 0) & (result < 1)  # a brighter lamp saturates the camera: clamped to 1
        correlations = [torch.corrcoef(torch.stack([view[unclipped], result[unclipped]]))[0, 1]
                        for view in dihedral_views(image)]
        assert max(correlations) > 0.999
        turned += int(torch.argmax(torch.stack(correlations))) != 0
    assert turned >= 2  # most images are turned or mirrored (7 in 8 on average)


def torchrun(*args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "myTrain.py"), *map(str, args)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def test_torchrun_two_processes_train_validate_and_resume(demo_root, tmp_path):
    trained = torchrun("--root_dir", demo_root, "--epochs", "2", *FAST, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert trained.stdout.count("Epoch 1 (2/2)") == 1, trained.stdout  # only rank 0 prints
    assert "x 2 processes" in trained.stdout

    # the validation loss both processes agreed on is the loss of the saved model on the whole split
    best = load_checkpoint(find_best_checkpoint(tmp_path / ".ckpts"))
    model = SOAFModel(pretrained=False)
    model.load_state_dict(best["model"])
    val_loader = build_loader(SOAFDataset(demo_root, "val"), 8, 0, torch.device("cpu"), shuffle=False)
    assert validation_epoch(model, val_loader, nn.L1Loss(), torch.device("cpu")) == pytest.approx(
        best["val_loss"], rel=1e-4)

    resumed = torchrun("--root_dir", demo_root, "--epochs", "3", *FAST, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resumed from" in resumed.stdout and resumed.stdout.count("Epoch 2 (3/3)") == 1
    assert "Epoch 0 (1/3)" not in resumed.stdout


def test_int8_model_is_quantised_and_close_to_fp32(demo_root, tmp_path):
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False).eval()
    model.set_target_scale(torch.tensor([-20.0, 0.0, 20.0]))
    fp32_path = export_onnx(model, tmp_path / "model.onnx")
    train = SOAFDataset(demo_root, "train")
    int8_path = quantize_onnx(fp32_path, calibration_feeds(train, 8, ["input"]), tmp_path / "model_int8.onnx")
    graph = onnx.load(str(int8_path)).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) >= 10
    assert any(node.op_type == "Gemm" for node in graph.node)  # the head stays in fp32

    images = np.stack([SOAFDataset(demo_root, "test")[index][0].numpy() for index in range(8)])
    fp32, int8 = (onnx_session(path, torch.device("cpu")).run(None, {"input": images})[0]
                  for path in (fp32_path, int8_path))
    # an untrained network, whose activations the calibration images fit poorly: within 10% of the
    # output; myTest.py --quantize reports the error of a trained one against the labels
    np.testing.assert_allclose(int8, fp32, rtol=0.1)


def test_bench_measures_both_setups_and_prints_ratios(demo_root, tmp_path):
    result = run_script("bench.py", "--root_dir", demo_root, "--num_workers", "0", "--batch_size", "8",
                        "--steps", "1", "--latency_runs", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for measure in ("data loading (images/s)", "training step (images/s)", "training epoch (images/s)",
                    "checkpoint write (% of the epoch)", "PyTorch eager batch 1, median (ms)",
                    "ONNX Runtime batch 1, p95 (ms)"):
        assert f"| {measure} |" in result.stdout
    assert "ONNX Runtime (project) vs PyTorch eager (reference), batch-1 median:" in result.stdout


def test_speedups_and_slowdowns_read_as_such():
    from bench import speedup

    assert speedup(1.5) == "1.50x faster" and speedup(0.8) == "1.25x slower"


def test_threads_and_loader_processes_fit_the_cores_the_job_may_use(demo_root, tmp_path):
    """Confined to one core (as taskset, cgroup cpusets or SLURM do), training uses one compute
    thread and one loader process, whatever --num_workers asks, and says so first."""
    trained = subprocess.run([sys.executable, str(ROOT / "myTrain.py"), "--root_dir", str(demo_root), "--epochs", "1",
                              *FAST, "--num_workers", "2"],  # the last --num_workers counts
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert trained.returncode == 0, trained.stderr
    first_line = trained.stdout.splitlines()[0]
    assert "1 compute thread(s) and 1 loader process(es) per process for 1 usable CPU core(s)" in first_line
