"""Test a trained autofocus network on the test split, in PyTorch and in ONNX Runtime.

    python myTest.py --root_dir DATA                                # newest ckpt_best_*.pt in .ckpts/
    python myTest.py --root_dir DATA --ckpt .ckpts/ckpt_0100.pt     # any checkpoint
    python myTest.py --root_dir demo_data --num_workers 2            # CPU smoke run

Writes .onnx/<checkpoint>.onnx and .result/<checkpoint>_test.csv with one row per image:
image_path, label, pt_pred, onnx_pred, onnx_time_cost (milliseconds of one batch-1 run).
The network, backbone name and CSV glob come from the checkpoint; nothing is downloaded.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch

from myDataset import SOAFDataset
from myModel import SOAFModel, export_onnx
from myTrain import CheckpointError, build_loader, find_best_checkpoint, get_common_parser, load_checkpoint, run


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Test a SOAF autofocus network with PyTorch and ONNX Runtime.",
                                     parents=[get_common_parser()])
    parser.add_argument("--fe_str", default=None,
                        help="timm feature extractor name (default: the one the checkpoint was trained with)")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="checkpoint to test (default: the newest ckpt_best_*.pt in --ckpt_dir)")
    parser.add_argument("--onnx_dir", type=Path, default=Path(".onnx"),
                        help="where the ONNX model goes (default: %(default)s)")
    parser.add_argument("--result_dir", type=Path, default=Path(".result"),
                        help="where the result CSV goes (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed ONNX runs before timing starts (default: %(default)s)")
    return parser


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


@torch.no_grad()
def predict_pytorch(model, loader, device: torch.device) -> np.ndarray:
    """Batched predictions for the whole loader, shape (N,)."""
    model.eval()
    predictions = []
    for *inputs, _target in loader:
        predictions.append(model(*(tensor.to(device) for tensor in inputs)).float().cpu())
    return torch.cat(predictions).view(-1).numpy()


def onnx_session(onnx_path: Path, device: torch.device) -> ort.InferenceSession:
    """An ONNX Runtime session with full graph optimisation, on the GPU when testing on one."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(onnx_path), options, providers=providers)


def predict_onnx(session: ort.InferenceSession, dataset, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch-1 predictions and the milliseconds of each `session.run` alone, shapes (N,) and (N,)."""
    input_names = [node.name for node in session.get_inputs()]
    predictions = np.empty(len(dataset), dtype=np.float32)
    times_ms = np.empty(len(dataset), dtype=np.float64)
    for index in range(len(dataset)):
        *inputs, _target = dataset[index]  # decoding happens here, outside the timed part
        feeds = {name: tensor.numpy()[None] for name, tensor in zip(input_names, inputs)}
        if index == 0:
            for _ in range(warmup):  # first runs allocate memory and pick kernels
                session.run(None, feeds)
        start = time.perf_counter()
        (output,) = session.run(None, feeds)
        times_ms[index] = (time.perf_counter() - start) * 1000
        predictions[index] = output.reshape(-1)[0]
    return predictions, times_ms


def print_summary(results: pd.DataFrame, providers: list[str]) -> None:
    """Number of images, MAE of both models, their largest disagreement and ONNX latency."""
    pt_error = (results["pt_pred"] - results["label"]).abs()
    onnx_error = (results["onnx_pred"] - results["label"]).abs()
    latency = results["onnx_time_cost"]
    print(f"images:                      {len(results)}")
    print(f"MAE PyTorch:                 {pt_error.mean():.4f}")
    print(f"MAE ONNX:                    {onnx_error.mean():.4f}")
    print(f"max |pt_pred - onnx_pred|:   {(results['pt_pred'] - results['onnx_pred']).abs().max():.2e}")
    print(f"ONNX latency (batch 1):      median {latency.median():.2f} ms, "
          f"p95 {latency.quantile(0.95):.2f} ms on {', '.join(providers)}")


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    ckpt_path = checkpoint_to_test(args)
    checkpoint = load_checkpoint(ckpt_path)
    trained_args = checkpoint.get("args", {})
    fe_str = args.fe_str or trained_args.get("fe_str", "mobilenetv4_conv_small")
    glob = args.glob or trained_args.get("glob")
    print(f"Testing {ckpt_path} (epoch {checkpoint['epoch']}, backbone {fe_str}) on {device}")

    test_set = SOAFDataset(args.root_dir, "test", **({} if glob is None else {"glob_pattern": glob}))
    loader = build_loader(test_set, args.batch_size, args.num_workers, device, shuffle=False)
    model = SOAFModel(fe_str, pretrained=False)  # every weight comes from the checkpoint
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{ckpt_path} does not fit backbone {fe_str}: {error}") from error
    model.to(device)

    pt_pred = predict_pytorch(model, loader, device)
    onnx_path = export_onnx(model, args.onnx_dir / f"{ckpt_path.stem}.onnx")
    session = onnx_session(onnx_path, device)
    onnx_pred, onnx_time_cost = predict_onnx(session, test_set, args.warmup)

    results = pd.DataFrame({
        "image_path": test_set.frame["image_path"],
        "label": test_set.labels.numpy(),
        "pt_pred": pt_pred,
        "onnx_pred": onnx_pred,
        "onnx_time_cost": onnx_time_cost,
    })
    args.result_dir.mkdir(parents=True, exist_ok=True)
    result_path = args.result_dir / f"{ckpt_path.stem}_test.csv"
    results.to_csv(result_path, index=False)
    print(f"ONNX model: {onnx_path}")
    print_summary(results, session.get_providers())
    print(f"Results: {result_path}")


if __name__ == "__main__":
    run(main, get_args_parser().parse_args())
