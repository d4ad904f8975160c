"""Autofocus networks: a timm backbone with a small regression head (SOAFModel, MOAFModel; their
code is in autofocuskit/networks.py), and, run as a script, a summary and a test export.

    python myModel.py                      # summary, test output shape, ONNX file in .onnx/
    python myModel.py --task moaf          # the multi-objective model, two ONNX inputs
    python myModel.py --fe_str resnet18 --onnx_path resnet18.onnx

    from myModel import SOAFModel, MOAFModel
    model = SOAFModel(pretrained=False)                             # (N,3,224,224) -> (N,1) um
    model = MOAFModel(pretrained=False)                             # (N,3,224,224), (N,2) -> (N,1) DOF
    model = SOAFModel(pretrained=False, head="split")               # also distance and side of focus:
    outputs = model(images, all_outputs=True)                       # HeadOutputs, (N,1) each
"""
import argparse
from pathlib import Path

from autofocuskit.cli import run
from autofocuskit.schema import DEFAULT_BACKBONE, HEADS, TASK_NAMES, TASK_UNITS

__all__ = ["SOAFModel", "MOAFModel", "HeadOutputs", "export_onnx", "ModelCreationError"]


def __getattr__(name: str):
    """The networks, imported when first asked for, so that --help answers without loading torch."""
    if name in __all__:
        from autofocuskit import networks

        return getattr(networks, name)
    raise AttributeError(f"module 'myModel' has no attribute {name!r}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Show the autofocus model and export it to ONNX.")
    parser.add_argument("--task", choices=TASK_NAMES, default="soaf",
                        help="soaf: image -> um; moaf: image and (magnification, NA) -> DOF (default: %(default)s)")
    parser.add_argument("--fe_str", default=DEFAULT_BACKBONE,
                        help="timm backbone name (default: %(default)s)")
    parser.add_argument("--head", choices=HEADS, default="signed",
                        help="signed: one output; split: distance and side of focus (default: %(default)s)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                        help="load ImageNet weights; the graph is the same either way (default: %(default)s)")
    parser.add_argument("--pretrained_file", default=None,
                        help="local timm weights file to load instead of the hub (default: %(default)s)")
    parser.add_argument("--onnx_path", type=Path, default=None,
                        help="where the ONNX file goes (default: .onnx/<task>_model.onnx)")
    return parser


def main(args: argparse.Namespace) -> None:
    import torch
    from torchinfo import summary

    from autofocuskit.exported_model import ModelMetadata
    from autofocuskit.networks import MOAFModel, SOAFModel, export_onnx

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_class = SOAFModel if args.task == "soaf" else MOAFModel
    model = model_class(args.fe_str, args.pretrained, args.pretrained_file, head=args.head)
    model = model.to(device).eval()
    example = model.example_inputs(1)
    summary(model, input_data=list(example), device=device)

    with torch.no_grad():
        output = model(*example)
    print(f"\ntest output shape: {tuple(output.shape)} (expected (1, 1))")
    onnx_path = args.onnx_path or Path(".onnx") / f"{args.task}_model.onnx"
    metadata = ModelMetadata(task=args.task, unit=TASK_UNITS[args.task], head=args.head)
    print(f"ONNX model written to {export_onnx(model, onnx_path, metadata)} (untrained, without a measured error: "
          "for inspecting the graph; myTest.py writes the file to deploy)")


if __name__ == "__main__":
    run(main, get_args_parser().parse_args())
