"""Test a trained autofocus network on the test split, in PyTorch and in ONNX Runtime.

    python myTest.py --root_dir DATA                                # newest ckpt_best_*.pt in .ckpts/
    python myTest.py --root_dir DATA --ckpt .ckpts/ckpt_0100.pt     # any checkpoint
    python myTest.py --root_dir demo_data --num_workers 2            # CPU smoke run

Writes .onnx/<run>-<checkpoint>.onnx (<run>: the checkpoint's folder, e.g. ckpts), and in
.result/ the table <run>-<checkpoint>_test.csv with one
row per image (image_path, label, pt_pred, onnx_pred, onnx_time_cost in milliseconds of one
batch-1 run, then magnification, NA and dof_um where the CSV has them) and the errors per
objective in <run>-<checkpoint>_metrics.json. The task, backbone and CSV glob come from the
checkpoint; nothing is downloaded.
"""
import argparse
from pathlib import Path

from autofocuskit.cli import add_data_arguments, positive, run, writing
from autofocuskit.schema import DEFAULT_BACKBONE, TASK_NAMES


def get_args_parser() -> argparse.ArgumentParser:
    parser = add_data_arguments(argparse.ArgumentParser(
        description="Test a SOAF or MOAF autofocus network with PyTorch and ONNX Runtime."))
    parser.add_argument("--task", choices=TASK_NAMES, default=None,
                        help="soaf or moaf (default: the task the checkpoint was trained for)")
    parser.add_argument("--glob", default=None,
                        help="CSV files to use in the test split, e.g. '20x_0.7*.csv' (default: the checkpoint's)")
    parser.add_argument("--fe_str", default=None,
                        help="timm backbone name (default: the one the checkpoint was trained with)")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="checkpoint to test (default: the newest ckpt_best_*.pt in --ckpt_dir)")
    parser.add_argument("--onnx_dir", type=Path, default=Path(".onnx"),
                        help="where the ONNX model goes (default: %(default)s)")
    parser.add_argument("--result_dir", type=Path, default=Path(".result"),
                        help="where the result CSV goes (default: %(default)s)")
    parser.add_argument("--warmup", type=positive(int, allow_zero=True), default=10,
                        help="untimed ONNX runs before timing starts (default: %(default)s)")
    parser.add_argument("--onnx_threads", type=positive(int, allow_zero=True), default=0,
                        help="ONNX Runtime threads per inference; 0: one per physical core (default: %(default)s)")
    parser.add_argument("--quantize", action="store_true",
                        help="also test a static int8 ONNX model, calibrated on training images, "
                             "side by side with fp32 (default: off)")
    parser.add_argument("--calibration_images", type=positive(int), default=64,
                        help="training images that calibrate --quantize (default: %(default)s)")
    parser.add_argument("--error_model_splits", nargs="+", choices=("val", "test"), default=["val", "test"],
                        help="the held-out splits the focus loop's error model is measured on: the checkpoint "
                             "was chosen on the validation split, which alone flatters it, and a few fields "
                             "measure spreads poorly (default: %(default)s)")
    return parser


if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()  # before torch loads, so that --help and typos answer at once

# the test: everything below loads torch
import json
import time

import numpy as np
import pandas as pd
import torch
from torchvision import transforms

from autofocuskit.checkpoints import CheckpointError, find_best_checkpoint, load_checkpoint
from autofocuskit.epochs import split_batch
from autofocuskit.networks import quantization_feeds, export_onnx, quantize_onnx
from autofocuskit.exported_model import DISTANCE_OUTPUT, SIGNED_OUTPUT, ModelMetadata, open_session
from autofocuskit.processes import fit_threads_to_cores, progress, resolve_device
from autofocuskit.datasets import field_key
from autofocuskit.error_model import fit_error_model
from autofocuskit.metrics import per_objective_metrics, plot_error_model, plot_report
from autofocuskit.schema import dof_um_of_rows
from autofocuskit.sharpness import log_sharpness
from autofocuskit.tasks import TASKS, build_dataset, build_loader


def checkpoint_to_test(args) -> Path:
    """--ckpt if given, else the newest best checkpoint; the error says what to do if there is none."""
    if args.ckpt is not None:
        if not args.ckpt.is_file():
            raise CheckpointError(f"checkpoint {args.ckpt} does not exist")
        return args.ckpt
    best = find_best_checkpoint(args.ckpt_dir) if args.ckpt_dir.is_dir() else None
    if best is None:
        raise CheckpointError(f"no ckpt_best_*.pt in {args.ckpt_dir}; train first with myTrain.py, "
                              "or pass --ckpt_dir or --ckpt")
    return best


def output_name(ckpt_path: Path) -> str:
    """What the ONNX file and the results of a checkpoint are called: its run folder and its name,
    e.g. ckpts_moaf-ckpt_best_0026 for .ckpts_moaf/ckpt_best_0026.pt, so that runs never collide."""
    run_folder = ckpt_path.resolve().parent.name.lstrip(".") or "run"
    return f"{run_folder}-{ckpt_path.stem}"


@torch.no_grad()
def predict_pytorch(model, loader, device: torch.device) -> dict[str, np.ndarray]:
    """Batched outputs for the whole loader, by the ONNX file's output names, (N,) each: `output`
    (the defocus), and for the split head `distance` and `p_positive`."""
    model.eval()
    outputs = []
    for batch in progress(loader, "PyTorch"):
        inputs, _target = split_batch(batch, device)
        outputs.append(torch.cat(model.exported_outputs(model(*inputs, all_outputs=True)), dim=1).float().cpu())
    return dict(zip(model.output_names(), torch.cat(outputs).numpy().T))


def predict_onnx(session, dataset, warmup: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Batch-1 outputs by output name, (N,) each, and the milliseconds of each `session.run`
    alone, (N,)."""
    input_names = [node.name for node in session.get_inputs()]
    output_names = [node.name for node in session.get_outputs()]
    predictions = np.empty((len(dataset), len(output_names)), dtype=np.float32)
    times_ms = np.empty(len(dataset), dtype=np.float64)
    for index in progress(range(len(dataset)), "ONNX Runtime"):
        *inputs, _target = dataset[index]  # decoding happens here, outside the timed part
        feeds = {name: tensor.numpy()[None] for name, tensor in zip(input_names, inputs)}
        if index == 0:
            for _ in range(warmup):  # first runs allocate memory and pick kernels
                session.run(None, feeds)
        start = time.perf_counter()
        outputs = session.run(None, feeds)
        times_ms[index] = (time.perf_counter() - start) * 1000
        predictions[index] = [output.reshape(-1)[0] for output in outputs]
    return dict(zip(output_names, predictions.T)), times_ms


def quantize_int8(args, onnx_path: Path, model, task: str, glob: str | None) -> Path:
    """The static int8 model of `onnx_path`, calibrated on --calibration_images training images."""
    train_set = build_dataset(args, "train", transforms.ToTensor(), task, glob)
    feeds = quantization_feeds(train_set, args.calibration_images, list(model.input_names))
    with writing(onnx_path.with_name(onnx_path.stem + "_int8.onnx")):
        int8_path = quantize_onnx(onnx_path, feeds, onnx_path.with_name(onnx_path.stem + "_int8.onnx"))
    print(f"int8 ONNX model: {int8_path} (calibrated on {len(feeds)} training images)")
    return int8_path


def print_summary(results: pd.DataFrame, metrics: pd.DataFrame, unit: str, providers: list[str]) -> None:
    """The metrics table (one column per objective), the largest PyTorch/ONNX disagreement and the latency."""
    print(f"Test errors per objective, of the PyTorch model unless named onnx_ or int8_ (in {unit} unless the "
          "name ends in _um, _dof or _ms; within_1_dof, side_accuracy and confident_* are shares):")
    table = metrics.T
    print(table.apply(lambda row: row.map(lambda value: f"{value:.0f}" if row.name == "images" else f"{value:.4f}"),
                      axis=1).to_string())
    latency = results["onnx_time_cost"]
    print(f"max |pt_pred - onnx_pred|: {(results['pt_pred'] - results['onnx_pred']).abs().max():.2e} {unit}")
    print(f"ONNX latency (batch 1): median {latency.median():.2f} ms, "
          f"p95 {latency.quantile(0.95):.2f} ms on {', '.join(providers)}")
    if "int8_pred" in results:
        int8_latency = results["int8_time_cost"].median()
        print(f"fp32 vs int8 ONNX: MAE {(results['onnx_pred'] - results['label']).abs().mean():.4f} vs "
              f"{(results['int8_pred'] - results['label']).abs().mean():.4f} {unit}, median latency "
              f"{latency.median():.2f} vs {int8_latency:.2f} ms ({latency.median() / int8_latency:.2f}x)")


def result_table(test_set, pt_outputs: dict, onnx_outputs: dict, onnx_time_cost) -> pd.DataFrame:
    """One row per test image: the contract's columns, the split head's distance and
    probability of a positive label (PyTorch and ONNX), then objective and DOF where known."""
    frame = test_set.frame
    results = pd.DataFrame({
        "image_path": frame["image_path"],
        "label": frame[test_set.target_column],
        "pt_pred": pt_outputs["output"],
        "onnx_pred": onnx_outputs["output"],
        "onnx_time_cost": onnx_time_cost,
    })
    if "p_positive" in pt_outputs:
        for runtime, outputs in (("pt", pt_outputs), ("onnx", onnx_outputs)):
            results[f"{runtime}_distance"], results[f"{runtime}_p_positive"] = outputs["distance"], outputs["p_positive"]
    for column in ("magnification", "NA"):
        if column in frame.columns:
            results[column] = frame[column]
    dof_um = dof_um_of_rows(frame)
    if dof_um is not None:
        results["dof_um"] = dof_um
    return results


def measured_error_model(args, splits: list[str], model, checkpoint: dict, task: str, glob: str | None, device,
                         test_set, test_outputs: dict) -> tuple:
    """The network's error on the held-out `splits` (error_model.py; the test split's outputs
    already computed): (model, labels, distances, signed)."""
    labels, signed, distances, sharpness, fields = [], [], [], [], []
    for split in splits:
        dataset = test_set if split == "test" else build_dataset(args, split, transforms.ToTensor(), task, glob)
        outputs = test_outputs if split == "test" else predict_pytorch(
            model, build_loader(dataset, args.batch_size, args.num_workers, device, shuffle=False), device)
        labels.append(dataset.frame[dataset.target_column].to_numpy(dtype=np.float64))
        signed.append(outputs[SIGNED_OUTPUT])
        distances.append(outputs[DISTANCE_OUTPUT] if DISTANCE_OUTPUT in outputs else np.abs(outputs[SIGNED_OUTPUT]))
        sharpness += [log_sharpness(np.asarray(dataset.read_image(index))[None]) for index in range(len(dataset))]
        fields += [field_key(path) for path in dataset.frame["image_path"]]
    labels, signed, distances = (np.concatenate(column) for column in (labels, signed, distances))
    saturation = checkpoint.get("train_label_abs_max", float(np.abs(labels).max()))
    return fit_error_model(labels, distances, signed, saturation, sharpness, fields), labels, distances, signed


def onnx_metadata(checkpoint: dict, task: str, error_model=None) -> ModelMetadata:
    """What the ONNX file records of its training: task, unit, head and, where the checkpoint
    has them, the largest |label| trained on (the autofocus reports estimates beyond it as out
    of range), the specimen pixel size per objective and the camera pixel (the autofocus
    resamples frames to them), and the error measured on the held-out splits."""
    trained_args = checkpoint.get("args", {})
    return ModelMetadata(task=task, unit=TASKS[task].unit, head=trained_args.get("head", "signed"),
                         label_abs_max=checkpoint.get("train_label_abs_max"),
                         pixel_size_um=checkpoint.get("pixel_size_um") or {},
                         camera_pixel_um=trained_args.get("camera_pixel_um"), error_model=error_model)


def load_model(checkpoint: dict, ckpt_path: Path, task: str, fe_str: str, device: torch.device):
    """The checkpoint's network, with the head it was trained with, built without downloading anything."""
    head = checkpoint.get("args", {}).get("head", "signed")
    model = TASKS[task].model(fe_str, pretrained=False, head=head)  # every weight comes from the checkpoint
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{ckpt_path} does not fit task {task} with backbone {fe_str}: {error}") from error
    return model.to(device)


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    fit_threads_to_cores()
    ckpt_path = checkpoint_to_test(args)
    checkpoint = load_checkpoint(ckpt_path)
    trained_args = checkpoint.get("args", {})
    task = args.task or trained_args.get("task", "soaf")
    fe_str = args.fe_str or trained_args.get("fe_str", DEFAULT_BACKBONE)
    glob = args.glob or trained_args.get("glob")
    unit = TASKS[task].unit
    print(f"Testing {ckpt_path} (task {task}, epoch {checkpoint['epoch']}, backbone {fe_str}, "
          f"{trained_args.get('head', 'signed')} head) on {device}")

    test_set = build_dataset(args, "test", transforms.ToTensor(), task, glob)
    loader = build_loader(test_set, args.batch_size, args.num_workers, device, shuffle=False)
    model = load_model(checkpoint, ckpt_path, task, fe_str, device)

    pt_outputs = predict_pytorch(model, loader, device)
    splits = list(dict.fromkeys(args.error_model_splits))  # each once, however often named
    error_model, held_labels, held_distances, held_signed = measured_error_model(
        args, splits, model, checkpoint, task, glob, device, test_set, pt_outputs)
    name = output_name(ckpt_path)
    with writing(args.onnx_dir / f"{name}.onnx"):
        onnx_path = export_onnx(model, args.onnx_dir / f"{name}.onnx", onnx_metadata(checkpoint, task, error_model))
    session = open_session(onnx_path, device.type == "cuda", args.onnx_threads)
    onnx_outputs, onnx_time_cost = predict_onnx(session, test_set, args.warmup)

    results = result_table(test_set, pt_outputs, onnx_outputs, onnx_time_cost)
    if args.quantize:
        int8_path = quantize_int8(args, onnx_path, model, task, glob)
        int8_session = open_session(int8_path, device.type == "cuda", args.onnx_threads)
        int8_outputs, int8_time_cost = predict_onnx(int8_session, test_set, args.warmup)
        results["int8_pred"], results["int8_time_cost"] = int8_outputs["output"], int8_time_cost
    metrics = per_objective_metrics(results, unit, checkpoint.get("train_label_mean"))
    with writing(args.result_dir):
        args.result_dir.mkdir(parents=True, exist_ok=True)
    result_path = args.result_dir / f"{name}_test.csv"
    metrics_path = args.result_dir / f"{name}_metrics.json"
    with writing(result_path):
        results.to_csv(result_path, index=False)
    summary = {"checkpoint": str(ckpt_path), "task": task, "unit": unit,
               "onnx_latency_ms": {"median": float(results["onnx_time_cost"].median()),
                                   "p95": float(results["onnx_time_cost"].quantile(0.95))},
               "objectives": json.loads(metrics.to_json(orient="index"))}
    with writing(metrics_path):
        metrics_path.write_text(json.dumps(summary, indent=2) + "\n")
    with writing(args.result_dir / f"{name}_*.png"):
        plots = plot_report(results, unit, args.result_dir / name)
        plots.append(plot_error_model(held_labels, held_distances, held_signed, error_model, unit,
                                      args.result_dir / f"{name}_error_model.png"))
    print(f"ONNX model: {onnx_path}")
    print_summary(results, metrics, unit, session.get_providers())
    print(f"Error model (measured on the {' and '.join(splits)} split{'s' if len(splits) > 1 else ''}, in the ONNX "
          f"file for the focus loop): {error_model.describe(unit)}")
    print(f"Metrics: {metrics_path}")
    print(f"Plots: {', '.join(str(path) for path in plots)}")
    print(f"Results: {result_path}")


if __name__ == "__main__":
    run(main, cli_args)
