"""Training and inference speed: a plain reference loop against this project's defaults,
measured in one run, on the same data and machine, so that the ratios mean something.

    python bench.py --root_dir demo_data                       # the GPU if there is one, else the CPU
    python bench.py --root_dir DATA --device cuda --batch_size 64 --num_workers 8 --quantize

reference: the plain loop a user starts from: PIL + ToTensor, fp32, NCHW, DataLoader
           defaults, no augmentation, no BatchNorm recalibration, torch.save, ONNX Runtime
           with its defaults.
project:   myTrain.py's and myTest.py's defaults: uint8 images from the loader, scaled and
           augmented on the device, channels_last, --amp auto (bf16 or fp16 on CUDA, off on
           CPU), pinned memory and persistent workers where they apply, BatchNorm
           recalibration, atomic checkpoint writes, the tuned ONNX session.

It prints images per second for data loading alone, the training step alone and a full
epoch (training, recalibration, validation, checkpoint), batch-1 latency (median and 95th
percentile, the models taking turns call by call) of PyTorch eager and ONNX Runtime, and
the project/reference ratios.
"""
import argparse
from pathlib import Path

from autofocuskit.cli import positive, run, usable_cpu_count
from autofocuskit.schema import DEFAULT_BACKBONE, TASK_NAMES


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark the reference loop against the project's defaults.")
    parser.add_argument("--root_dir", type=Path, required=True,
                        help="dataset root, e.g. one make_demo_data.py wrote")
    parser.add_argument("--task", choices=TASK_NAMES, default="soaf", help="(default: %(default)s)")
    parser.add_argument("--glob", default=None, help="CSV files per split (default: the task's default)")
    parser.add_argument("--fe_str", default=DEFAULT_BACKBONE, help="timm backbone (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="torch device; auto: the GPU if there is one (default: %(default)s)")
    parser.add_argument("--batch_size", type=positive(int), default=32, help="(default: %(default)s)")
    parser.add_argument("--num_workers", type=positive(int, allow_zero=True), default=min(8, usable_cpu_count()),
                        help="loader processes, the same for both sides (default: %(default)s)")
    parser.add_argument("--steps", type=positive(int), default=20,
                        help="timed training steps, after 3 untimed ones (default: %(default)s)")
    parser.add_argument("--latency_runs", type=positive(int), default=100,
                        help="timed batch-1 inferences, after 10 untimed ones (default: %(default)s)")
    parser.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                        help="the project side's mixed precision, as in myTrain.py (default: %(default)s)")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                        help="the project side's memory layout (default: %(default)s)")
    parser.add_argument("--quantize", action="store_true", help="also time the static int8 ONNX model")
    return parser


if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()  # before torch loads, so that --help and typos answer at once

# the benchmark: everything below loads torch
import os
import platform
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.transforms import v2

from autofocuskit.checkpoints import save_atomically
from autofocuskit.epochs import DefocusLoss, StepOptions, reestimate_batchnorm, step_options, train_epoch, validation_epoch
from autofocuskit.imaging import IMAGE_SIZE
from autofocuskit.networks import quantization_feeds, export_onnx, quantize_onnx
from autofocuskit.exported_model import open_session
from autofocuskit.processes import resolve_device
from autofocuskit.tasks import TASKS, build_loader



@dataclass
class Setup:
    """One side of the comparison."""

    name: str
    options: StepOptions
    bn_recalibration_batches: int
    augment: bool


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loading_rate(loader: DataLoader) -> float:
    """Images per second of one pass over the loader, nothing else done with the batches."""
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += batch[0].shape[0]
    return seen / (time.perf_counter() - start)


def step_rate(model, batch, setup: Setup, device: torch.device, steps: int) -> float:
    """Images per second of forward, backward and Adam step on one batch already on the device
    (with what the setup does to a batch there: scaling, augmentation, layout)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    batch = [tensor.to(device) for tensor in batch]
    train_epoch(model, [batch] * 3, DefocusLoss(), optimizer, device, options=setup.options,
                augment=setup.augment)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    train_epoch(model, [batch] * steps, DefocusLoss(), optimizer, device, options=setup.options,
                augment=setup.augment)
    synchronize(device)
    return steps * batch[0].shape[0] / (time.perf_counter() - start)


def epoch_time(model, train_loader, val_loader, setup: Setup, device, save) -> tuple[float, float]:
    """Seconds of one full epoch as the setup runs it, and the seconds of it spent writing the checkpoint."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    start = time.perf_counter()
    train_epoch(model, train_loader, DefocusLoss(), optimizer, device, options=setup.options, augment=setup.augment)
    reestimate_batchnorm(model, train_loader, device, setup.bn_recalibration_batches, setup.options)
    validation_epoch(model, val_loader, DefocusLoss(), device, setup.options)
    synchronize(device)
    save_start = time.perf_counter()
    save({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    return time.perf_counter() - start, time.perf_counter() - save_start


def interleaved_latency_ms(runners: dict, runs: int, block: int = 20) -> dict:
    """Median and 95th-percentile milliseconds of `runs` calls of each runner.

    The runners take turns in blocks of `block` calls, so that a busy moment of a shared
    machine slows them all alike and their ratios stay fair; each block starts with 5
    untimed calls, because the threads of the previous runtime may still be spinning.
    """
    times = {name: [] for name in runners}
    while any(len(t) < runs for t in times.values()):
        for name, infer in runners.items():
            for call in range(5 + min(block, runs - len(times[name]))):
                start = time.perf_counter()
                infer()
                if call >= 5:
                    times[name].append((time.perf_counter() - start) * 1000)
    return {name: (float(np.median(t)), float(np.percentile(t, 95))) for name, t in times.items()}


def pytorch_runner(model, inputs, device):
    """One batch-1 inference in PyTorch eager mode, fp32 and NCHW as myTest.py runs it."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    inputs = [tensor.to(device) for tensor in inputs]

    @torch.no_grad()
    def run():
        model(*inputs)
        synchronize(device)
    return run


def onnx_runner(session: ort.InferenceSession, inputs):
    feeds = {node.name: tensor.numpy() for node, tensor in zip(session.get_inputs(), inputs)}
    return lambda: session.run(None, feeds)


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return (f"{text}; torch {torch.__version__}, onnxruntime {ort.__version__}, "
            f"device {device}")


def build_loaders(args, dataset, train_plain, val_plain, device) -> dict:
    """The reference's plain DataLoaders and the project's own, by setup name: (train, val)."""
    return {
        "reference": (DataLoader(train_plain, args.batch_size, shuffle=True, num_workers=args.num_workers),
                      DataLoader(val_plain, args.batch_size, num_workers=args.num_workers)),
        "project": (build_loader(dataset("train", v2.PILToTensor()), args.batch_size, args.num_workers,
                                 device, shuffle=True),
                    build_loader(dataset("val", v2.PILToTensor()), args.batch_size, args.num_workers, device,
                                 shuffle=False)),
    }


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    root = args.root_dir
    task = TASKS[args.task]
    glob = args.glob or task.default_glob

    def dataset(split, transform):
        return task.dataset(root, split, transform, glob, image_size=(IMAGE_SIZE, IMAGE_SIZE))

    reference = Setup("reference", StepOptions(), bn_recalibration_batches=0, augment=False)
    project = Setup("project", step_options(args, device), bn_recalibration_batches=10, augment=True)
    train_plain, val_plain = dataset("train", transforms.ToTensor()), dataset("val", transforms.ToTensor())
    loaders = build_loaders(args, dataset, train_plain, val_plain, device)
    print(f"Machine: {machine_description(device)}")
    print(f"Data: {root}, task {args.task}, {len(train_plain)} training and {len(val_plain)} validation images, "
          f"batch {args.batch_size}, {args.num_workers} workers")
    print(f"project options: mixed precision {project.options.amp_dtype or 'off'}, "
          f"channels_last {project.options.channels_last}")

    example = [tensor[:1] for tensor in next(iter(loaders["reference"][0]))[:-1]]  # float, as ONNX takes it
    results, runners = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        saves = {"reference": lambda state: torch.save(state, Path(folder) / "plain.pt"),
                 "project": lambda state: save_atomically(state, Path(folder) / "atomic.pt")}
        for setup in (reference, project):
            torch.manual_seed(0)
            model = task.model(args.fe_str, pretrained=False).to(device)
            if setup.options.channels_last:
                model = model.to(memory_format=torch.channels_last)
            train_loader, val_loader = loaders[setup.name]
            print(f"[{setup.name}] data loading ...", flush=True)
            loading = loading_rate(train_loader)
            print(f"[{setup.name}] training steps ...", flush=True)
            steps = step_rate(model, next(iter(train_loader)), setup, device, args.steps)
            print(f"[{setup.name}] full epoch ...", flush=True)
            seconds, save_seconds = epoch_time(model, train_loader, val_loader, setup, device, saves[setup.name])
            onnx_path = export_onnx(model, Path(folder) / f"{setup.name}.onnx")
            session = (ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
                       if setup is reference else open_session(onnx_path, device.type == "cuda"))
            runners[setup.name, "PyTorch eager"] = pytorch_runner(model, example, device)
            runners[setup.name, "ONNX Runtime"] = onnx_runner(session, example)
            if setup is project and args.quantize:
                calibration = quantization_feeds(dataset("train", transforms.ToTensor()), 64, list(model.input_names))
                int8 = open_session(quantize_onnx(onnx_path, calibration, Path(folder) / "int8.onnx"),
                                    device.type == "cuda")
                runners[setup.name, "ONNX int8"] = onnx_runner(int8, example)
            results[setup.name] = {"data loading (images/s)": loading, "training step (images/s)": steps,
                                   "training epoch (images/s)": len(train_plain) / seconds,
                                   "checkpoint write (% of the epoch)": 100 * save_seconds / seconds}
        print("batch-1 latency, all models taking turns ...", flush=True)
        for (name, runtime), (median, p95) in interleaved_latency_ms(runners, args.latency_runs).items():
            results[name][f"{runtime} batch 1, median (ms)"] = median
            results[name][f"{runtime} batch 1, p95 (ms)"] = p95
    print_table(results)


def speedup(ratio: float) -> str:
    """'1.50x faster' for a ratio above 1, '1.25x slower' for 0.8."""
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def print_table(results: dict) -> None:
    """Markdown table: one row per measure, ratio project/reference (speed: higher is better)."""
    reference, project = results["reference"], results["project"]
    print("\n| measure | reference | project | project / reference |\n|---|---:|---:|---:|")
    for measure, value in project.items():
        base = reference.get(measure)
        if base is None:
            print(f"| {measure} | - | {value:.2f} | - |")
            continue
        if "images/s" in measure:
            ratio = speedup(value / base)
        elif "(ms)" in measure:
            ratio = speedup(base / value)
        else:
            ratio = "-"
        print(f"| {measure} | {base:.3g} | {value:.3g} | {ratio} |")
    eager = reference["PyTorch eager batch 1, median (ms)"]
    print(f"\nONNX Runtime (project) vs PyTorch eager (reference), batch-1 median: "
          f"{speedup(eager / project['ONNX Runtime batch 1, median (ms)'])}")
    if "ONNX int8 batch 1, median (ms)" in project:  # with --quantize
        print(f"int8 vs fp32 ONNX (project), batch-1 median: "
              f"{project['ONNX Runtime batch 1, median (ms)'] / project['ONNX int8 batch 1, median (ms)']:.2f}x")


if __name__ == "__main__":
    run(main, cli_args)
