"""Autofocus networks: a timm backbone with a small regression head (SOAFModel, MOAFModel, the
signed and the split head), pretrained weights found offline or refused with instructions, the
one ONNX export and int8 quantisation. myModel.py gives them to notebooks under the contract's
names and shows them from a shell; its docstring has the usage.
"""
import difflib
import os
import socket
import warnings
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np
import timm
import torch
from torch import nn

from .cli import UserError
from .exported_model import IMAGE_INPUT, INPUT_NAMES, OUTPUT_NAMES, SIGNED_OUTPUT, ModelMetadata, write_metadata
from .imaging import IMAGE_SIZE
from .schema import DEFAULT_BACKBONE, HEADS

ONNX_OPSET = 17


class HeadOutputs(NamedTuple):
    """What a network says of a batch, (N,1) each in the target's unit (um for SOAF, DOF for
    MOAF), for either head: the same fields in the same order in PyTorch, in the loss and in
    the ONNX file, whose outputs are the first three (`output` is the defocus)."""

    defocus: torch.Tensor  # the signed prediction, model(x): move the stage by -defocus to focus
    distance: torch.Tensor  # how far from focus, whatever the side (the signed head: |defocus|)
    p_positive: torch.Tensor  # probability that the defocus is above 0 (the signed head: 0 or 1)
    regression: torch.Tensor  # the signed regression the L1 loss trains (the signed head: defocus)


class ModelCreationError(UserError, RuntimeError):
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


def create_backbone(model_name: str, pretrained: bool, pretrained_file: str | None = None):
    """A timm backbone returning only its last feature map (out_indices=(-1,): every stage is used)."""
    if not timm.is_model(model_name):
        similar = difflib.get_close_matches(model_name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        hint = f"close names: {similar}" if similar else "timm.list_models() lists them all"
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


def regression_head(in_features: int, dropout: float = 0.5, outputs: int = 1) -> nn.Sequential:
    """in_features -> 256 -> 128 -> outputs, ReLU and Dropout (0.5 by default) between."""
    return nn.Sequential(
        nn.Linear(in_features, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(256, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(128, outputs),
    )


class AutofocusModel(nn.Module):
    """What SOAF and MOAF share: a timm backbone (the module `feature_extractor`) and global average pooling.

    `model_name` is any timm model; `pretrained_file` loads the backbone's ImageNet weights
    from a local timm weights file instead of the model hub (for machines without internet);
    `dropout` is the head's dropout probability.
    Subclasses add their head in `build_head` and define `forward`.

    `head="signed"` ends in one output, the signed defocus. `head="split"` ends in two: a
    signed regression, as the signed head's, and a distance from focus (>= 0, softplus).
    Blur shows the distance wherever there is tissue; the side shows only through weak
    asymmetries of the optics. With one signed output and an L1 loss, every prediction
    between -|d| and +|d| costs the same while the side is unknown, so training sits at
    the mean; the distance output learns how far regardless, while the signed output keeps
    the signed head's smooth signed target, through which asymmetries such as chromatic
    aberration (one colour sharper above focus, the other below) are learnt best. The
    side's probability is the signed output passed through a logistic calibration,
    `side_scale` and `side_bias`, fitted on the validation set after each epoch
    (engine.fit_side_logistic): near 0.5 where the signed output does not know the side.
    `model(x)` returns the signed (N,1) prediction either way (for the split head the
    distance on the likelier side: the point that minimises the expected L1 error);
    `model(x, all_outputs=True)` returns every output as HeadOutputs, in fp32.

    The head learns in a unit-scale space; `to_physical` maps its output to the target's
    unit with `target_center` and `target_scale`, buffers that training sets from the
    training labels (`set_target_scale`) and that travel in the state dict and the ONNX
    graph. So `model(x)` gives micrometres (SOAF) or depths of field (MOAF), while a
    head whose targets span +-40 um does not have to grow its weights to reach them.
    """

    input_names: tuple[str, ...] = (IMAGE_INPUT,)

    def __init__(
        self,
        model_name: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        pretrained_file: str | None = None,
        dropout: float = 0.5,
        head: str = "signed",
    ):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.dropout = dropout
        self.head = head
        self.feature_extractor = create_backbone(model_name, pretrained, pretrained_file)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        # pooling keeps the channel count, so the head's width is the last stage's channels
        self.feature_dim = self.feature_extractor.feature_info.channels()[-1]
        self.register_buffer("target_center", torch.tensor(0.0))
        self.register_buffer("target_scale", torch.tensor(1.0))
        if head == "split":  # p_positive = sigmoid(side_scale * signed / target_scale + side_bias)
            self.register_buffer("side_scale", torch.tensor(1.0))
            self.register_buffer("side_bias", torch.tensor(0.0))
        self.build_head()

    def build_head(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def set_target_scale(self, targets: torch.Tensor) -> None:
        """Centre and scale of the targets for an L1 loss: their median and mean absolute deviation."""
        targets = torch.as_tensor(targets, dtype=torch.float32).flatten()
        center = targets.median()
        scale = (targets - center).abs().mean()
        self.target_center.fill_(center)
        self.target_scale.fill_(scale if scale > 0 else 1.0)  # constant targets: nothing to scale

    def to_physical(self, raw_output: torch.Tensor) -> torch.Tensor:
        # in fp32 even under autocast: bf16 would round +-40 um to a quarter of a micrometre
        return self.target_center + self.target_scale * raw_output.float()

    def head_outputs(self, raw_output: torch.Tensor) -> HeadOutputs:
        """The head's raw (N,1) or (N,2) output as HeadOutputs in the target's unit."""
        if self.head == "signed":
            defocus = self.to_physical(raw_output)
            return HeadOutputs(defocus, defocus.abs(), (defocus > 0).float(), defocus)
        regression = self.to_physical(raw_output[:, :1])
        distance = self.target_scale * nn.functional.softplus(raw_output[:, 1:2].float())
        logit = self.side_scale * (regression - self.target_center) / self.target_scale + self.side_bias
        return HeadOutputs(torch.where(logit >= 0, distance, -distance), distance, torch.sigmoid(logit), regression)

    def exported_outputs(self, outputs: HeadOutputs) -> tuple[torch.Tensor, ...]:
        """The outputs the ONNX file has, in output_names' order: the signed head's defocus alone."""
        return outputs[:1] if self.head == "signed" else outputs[:3]

    def output_names(self) -> list[str]:
        """Names of the exported outputs in the ONNX graph; `output` is the defocus."""
        return [SIGNED_OUTPUT] if self.head == "signed" else list(OUTPUT_NAMES)

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(images)[-1]  # (N, C, H/32, W/32)
        # a reshape to a constant width, not Flatten: OpenCV's DNN module mis-sizes a Flatten
        # with a dynamic batch once its result meets a second input (MOAF's objective)
        return self.global_pool(features).reshape(-1, self.feature_dim)  # (N, C)

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Inputs of the right shapes for tracing, on the model's device."""
        device = next(self.parameters()).device
        return (torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device),)


class SOAFModel(AutofocusModel):
    """Single-objective autofocus: RGB image (N,3,224,224) -> defocus distance (N,1).

    SOAFModel(model_name=DEFAULT_BACKBONE, pretrained=True, pretrained_file=None, dropout=0.5, head="signed")
    """

    def build_head(self) -> None:
        self.fc = regression_head(self.feature_dim, self.dropout, 1 if self.head == "signed" else 2)

    def forward(self, x: torch.Tensor, all_outputs: bool = False) -> torch.Tensor | HeadOutputs:
        outputs = self.head_outputs(self.fc(self.pooled_features(x)))
        return outputs if all_outputs else outputs.defocus  # (N, 1)


def normalise_objective(params: torch.Tensor) -> torch.Tensor:
    """Raw (magnification, NA) of shape (N,2) -> two numbers of order one.

    Magnification spans 4x-100x and acts multiplicatively (pixel size in the specimen), so
    it enters as log10; NA spans 0.1-1.4. Fixed constants, not statistics of one dataset,
    so that an objective never seen in training still lands in a sensible range.
    """
    magnification, na = params[:, :1], params[:, 1:]  # static slices: no shape arithmetic in the ONNX graph
    return torch.cat([(torch.log10(magnification) - 1.3) / 0.5, (na - 0.7) / 0.4], dim=1)


class MOAFModel(AutofocusModel):
    """Multi-objective autofocus: image (N,3,224,224) and raw (magnification, NA) (N,2)
    -> defocus in depth-of-field units (N,1).

    The objective conditions the image features FiLM-style: a small network turns the
    normalised (magnification, NA) into a per-channel scale and shift of the pooled
    features, which then go through the same 256-128-1 head as SOAF. The image features
    measure blur in pixels; turning that into depth-of-field units is a multiplication by a
    factor that depends on the objective, which a per-channel scale expresses directly
    (concatenating the two numbers to 960 features would leave the head to learn a product).
    """

    input_names = INPUT_NAMES

    def build_head(self) -> None:
        self.film = nn.Sequential(nn.Linear(2, 64), nn.ReLU(inplace=True), nn.Linear(64, 2 * self.feature_dim))
        nn.init.zeros_(self.film[-1].weight)  # start as the identity: scale 1, shift 0
        nn.init.zeros_(self.film[-1].bias)
        self.fc = regression_head(self.feature_dim, self.dropout, 1 if self.head == "signed" else 2)

    def forward(self, x: torch.Tensor, params: torch.Tensor, all_outputs: bool = False) -> torch.Tensor | HeadOutputs:
        features = self.pooled_features(x)  # (N, C)
        film = self.film(normalise_objective(params))  # (N, 2C)
        scale, shift = film[:, :self.feature_dim], film[:, self.feature_dim:]  # (N, C) each, static slices
        outputs = self.head_outputs(self.fc(features * (1 + scale) + shift))
        return outputs if all_outputs else outputs.defocus  # (N, 1)

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        (images,) = super().example_inputs(batch_size)
        params = torch.tensor([[10.0, 0.3]], device=images.device).repeat(batch_size, 1)
        return images, params


class AllOutputs(nn.Module):
    """The model with its exported outputs as a tuple of graph outputs (what is exported)."""

    def __init__(self, model: AutofocusModel):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.exported_outputs(self.model(*inputs, all_outputs=True))


def export_onnx(model: AutofocusModel, save_path: Path, metadata: ModelMetadata | None = None) -> Path:
    """Write `model` to ONNX with inputs `model.input_names` and dynamic batch axes.

    Outputs: `output`, the signed (N,1) prediction; the split head adds `distance` (N,1)
    and `p_positive` (N,1) (exported_model.py names them). `metadata` goes into the file's
    metadata_props: what the model was trained on and its measured error, for the focus loop. The TorchScript exporter is used, although torch has
    deprecated it: it exports these CNNs in well under a second, and the graph of the
    torch.export-based exporter crashes OpenCV 4.14's DNN module (docs/guide.md).
    """
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()  # dropout and batch statistics must not be baked into the graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its retirement
        torch.onnx.export(
            AllOutputs(model),  # forward's `all_outputs` flag stays a Python bool, not a traced input
            model.example_inputs(1),
            str(save_path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=list(model.input_names),
            output_names=model.output_names(),
            dynamic_axes={name: {0: "batch_size"} for name in (*model.input_names, *model.output_names())},
        )
    model.train(was_training)
    if metadata is not None:
        write_metadata(save_path, metadata)
    return save_path


def quantize_onnx(fp32_path: Path, quantization_feeds: list[dict], save_path: Path) -> Path:
    """Write a static int8 version of an exported model, calibrated on `quantization_feeds`
    (dicts of input name -> numpy batch, real images of the training split).

    Convolutions get per-channel int8 weights and uint8 activations (QDQ format), the
    combination x86 CPUs with VNNI run fastest; the small head stays in fp32 so that the
    output, a physical distance, is not rounded to one of 256 steps.
    """
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(quantization_feeds)

        def get_next(self):
            return next(self.remaining, None)

    save_path = Path(save_path)
    prepared = save_path.with_name(save_path.stem + "_prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared))  # folds constants and infers shapes first
    quantize_static(str(prepared), str(save_path), Feeds(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    return save_path


def quantization_feeds(dataset, count: int, input_names: list[str]) -> list[dict]:
    """Batch-1 ONNX inputs of `count` images spread over `dataset`, for int8 calibration."""
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).astype(int))
    feeds = []
    for index in indices:
        *inputs, _target = dataset[int(index)]
        feeds.append({name: tensor.numpy()[None] for name, tensor in zip(input_names, inputs)})
    return feeds
