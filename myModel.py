"""Autofocus networks: a timm feature extractor with a small regression head.

    python myModel.py                      # summary, test output shape, ONNX file in .onnx/
    python myModel.py --model_name resnet18 --onnx_path resnet18.onnx

    from myModel import SOAFModel
    model = SOAFModel("mobilenetv4_conv_small", pretrained=False)   # (N,3,224,224) -> (N,1)
"""
import argparse
import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

IMAGE_SIZE = 224
ONNX_OPSET = 17


class ModelCreationError(RuntimeError):
    """The backbone cannot be built: unknown name, or pretrained weights unavailable."""


def hub_is_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers, checked in seconds instead of a minute of retries."""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # a direct connection says nothing when traffic must go through a proxy
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def cached_weights_file(model_name: str) -> str | None:
    """The local copy of a model's pretrained weights in the Hugging Face cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, filename) if hub_id else None
        if isinstance(cached, str):
            return cached
    return None


def weights_unavailable_message(model_name: str) -> str:
    return (
        f"pretrained weights for {model_name!r} cannot be downloaded (the model hub is not "
        "reachable) and no cached copy exists. Either train from scratch with --no-pretrained, "
        "or download the weights on a machine with internet, e.g.\n"
        f"    python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\"\n"
        "copy the model.safetensors file it leaves in ~/.cache/huggingface/hub over, and pass "
        "it with --pretrained_file PATH."
    )


def create_feature_extractor(model_name: str, pretrained: bool, pretrained_file: str | None = None):
    """A timm backbone returning only its last feature map (out_indices=(-1,): every stage is used)."""
    if not timm.is_model(model_name):
        similar = timm.list_models(f"*{model_name.split('_')[0].split('.')[0]}*")[:10]
        hint = f"similar names: {similar}" if similar else "timm.list_models() lists them all"
        raise ModelCreationError(f"unknown timm model {model_name!r}; {hint}")
    overlay = {}
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise ModelCreationError(f"pretrained weights file {pretrained_file} does not exist")
        overlay = dict(file=str(pretrained_file))
    elif pretrained and not hub_is_reachable():
        cached = cached_weights_file(model_name)
        if cached is None:
            raise ModelCreationError(weights_unavailable_message(model_name))
        overlay = dict(file=cached)
    try:
        return timm.create_model(
            model_name,
            pretrained=pretrained or pretrained_file is not None,
            pretrained_cfg_overlay=overlay or None,
            features_only=True,
            out_indices=(-1,),
        )
    except (OSError, RuntimeError) as error:
        if pretrained_file is not None:
            raise ModelCreationError(f"cannot load weights from {pretrained_file}: {error}") from error
        raise ModelCreationError(f"{weights_unavailable_message(model_name)}\n({error})") from error


def regression_head(in_features: int) -> nn.Sequential:
    """The user's head: in_features -> 256 -> 128 -> 1, ReLU and Dropout(0.5) between."""
    return nn.Sequential(
        nn.Linear(in_features, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(256, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(128, 1),
    )


class SOAFModel(nn.Module):
    """Single-objective autofocus: RGB image (N,3,224,224) -> defocus distance (N,1).

    `pretrained_file` loads the backbone's ImageNet weights from a local timm weights
    file instead of the model hub (for machines without internet).
    """

    def __init__(
        self,
        model_name: str = "mobilenetv4_conv_small",
        pretrained: bool = True,
        pretrained_file: str | None = None,
    ):
        super().__init__()
        self.feature_extractor = create_feature_extractor(model_name, pretrained, pretrained_file)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        # pooling keeps the channel count, so the head's width is the last stage's channels
        feature_dim = self.feature_extractor.feature_info.channels()[-1]
        self.fc = regression_head(feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(x)[-1]  # (N, C, H/32, W/32)
        pooled = torch.flatten(self.global_pool(features), 1)  # (N, C)
        return self.fc(pooled)  # (N, 1)


def export_onnx(model: nn.Module, save_path: Path) -> Path:
    """Write `model` to ONNX with input `input`, output `output` and a dynamic batch axis.

    The legacy TorchScript exporter is used: it keeps the batch axis dynamic even
    though it traces with a batch of 1, and exports these CNNs in well under a second.
    """
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # dropout and batch statistics must not be baked into the graph
    example = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its retirement
        torch.onnx.export(
            model,
            example,
            str(save_path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
        )
    model.train(was_training)
    return save_path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Show the autofocus model and export it to ONNX.")
    parser.add_argument("--model_name", default="mobilenetv4_conv_small",
                        help="timm backbone name (default: %(default)s)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                        help="load ImageNet weights; the graph is the same either way (default: %(default)s)")
    parser.add_argument("--pretrained_file", default=None,
                        help="local timm weights file to load instead of the hub (default: %(default)s)")
    parser.add_argument("--onnx_path", type=Path, default=Path(".onnx/soaf_model.onnx"),
                        help="where the ONNX file goes (default: %(default)s)")
    return parser


def main(args: argparse.Namespace) -> None:
    from torchinfo import summary

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = SOAFModel(args.model_name, args.pretrained, args.pretrained_file).to(device).eval()
    summary(model, input_size=(1, 3, IMAGE_SIZE, IMAGE_SIZE), device=device)

    with torch.no_grad():
        output = model(torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device))
    print(f"\ntest output shape: {tuple(output.shape)} (expected (1, 1))")
    print(f"ONNX model written to {export_onnx(model, args.onnx_path)}")


if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()
    try:
        main(cli_args)
    except ModelCreationError as error:
        raise SystemExit(f"error: {error}")
