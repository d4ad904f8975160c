"""The exported autofocus model's contract, without torch: the ONNX file's input and output
names, its metadata keys (written by myTest.py and myModel.py through `ModelMetadata`, read back
checked), opening a session on the fastest provider, and the microscope calibration saved
beside the file. Everything that writes or reads an exported model does it here.

    session = open_session(Path("model.onnx"))      # CPU; gpu=True tries TensorRT, then CUDA
    metadata = read_metadata(session, path)         # ModelMetadata: task, unit, head, label_abs_max, ...
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .cli import UserError, writing
from .error_model import ErrorModel
from .imaging import IMAGE_SIZE

IMAGE_INPUT, OBJECTIVE_INPUT = "input", "params"  # the image (N,3,224,224); MOAF also the objective (N,2)
INPUT_NAMES = (IMAGE_INPUT, OBJECTIVE_INPUT)
# the signed defocus (N,1); a split head adds the distance (N,1) and the probability of a positive side (N,1)
SIGNED_OUTPUT, DISTANCE_OUTPUT, SIDE_OUTPUT = "output", "distance", "p_positive"
OUTPUT_NAMES = (SIGNED_OUTPUT, DISTANCE_OUTPUT, SIDE_OUTPUT)

# the metadata keys and what a file written before one of them existed falls back to
METADATA_FALLBACKS = {
    "task": "soaf or moaf; absent: told by the inputs (params: moaf)",
    "unit": "um or DOF; absent: told by the task",
    "head": "signed or split; absent: told by the outputs",
    "label_abs_max": "the largest |label| trained on, in the unit; absent: no out_of_range status",
    "pixel_size_um": "JSON {objective: specimen pixel size in um}; absent: frames are used at their own sampling",
    "camera_pixel_um": "the camera pixel size of the training data, um; absent: pixel_size_um alone",
    "error_model": "JSON of the ErrorModel fields; absent: a conservative error model and a warning",
}


class ModelFileError(UserError, ValueError):
    """A file that is not an autofocus model ONNX Runtime can run."""


def open_session(path: Path, gpu: bool = False, threads: int = 0):
    """An ONNX Runtime session with full graph optimisation on the fastest provider there is
    (TensorRT, then CUDA when `gpu`, else the CPU with `threads`, 0: one per core), for a
    file checked to be an autofocus model; ModelFileError if it is not one."""
    import onnxruntime as ort  # here, so that importing this module costs nothing

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of layers: nothing to overlap
    options.intra_op_num_threads = threads
    gpu_providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if gpu else []
    providers = [name for name in gpu_providers if name in ort.get_available_providers()] + ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # ONNX Runtime raises its own exception types for foreign files
        raise ModelFileError(f"{path} is not an ONNX model ONNX Runtime can load: {error}") from None
    check_autofocus_model(session, path)
    return session


def check_autofocus_model(session, path: Path) -> None:
    """ModelFileError unless the session has this project's inputs and outputs."""
    inputs = {node.name: node.shape for node in session.get_inputs()}
    outputs = {node.name for node in session.get_outputs()}
    image_shape = inputs.get(IMAGE_INPUT, [None])[1:]
    if (image_shape != [3, IMAGE_SIZE, IMAGE_SIZE] or SIGNED_OUTPUT not in outputs
            or not set(inputs) <= set(INPUT_NAMES)):
        raise ModelFileError(f"{path} is not an autofocus model exported by this project: it needs an input "
                             f"'input' of shape (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) (and 'params' for MOAF) and an "
                             f"output 'output'; it has inputs {inputs} and outputs {sorted(outputs)}")


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model's file records of its training (METADATA_FALLBACKS: the keys)."""

    task: str | None = None
    unit: str | None = None
    head: str | None = None
    label_abs_max: float | None = None  # in the model's unit
    pixel_size_um: dict = field(default_factory=dict)  # objective name -> specimen pixel size
    camera_pixel_um: float | None = None
    error_model: ErrorModel | None = None  # in the model's unit

    def to_props(self) -> dict[str, str]:
        """The ONNX file's metadata_props: the keys that have a value."""
        props = {"task": self.task, "unit": self.unit, "head": self.head,
                 "label_abs_max": None if self.label_abs_max is None else repr(float(self.label_abs_max)),
                 "pixel_size_um": json.dumps(self.pixel_size_um) if self.pixel_size_um else None,
                 "camera_pixel_um": None if self.camera_pixel_um is None else repr(float(self.camera_pixel_um)),
                 "error_model": None if self.error_model is None else self.error_model.to_metadata()}
        return {key: value for key, value in props.items() if value is not None}

    @classmethod
    def from_props(cls, props: dict, path) -> "ModelMetadata":
        """The metadata of the file at `path`; ModelFileError naming the key where one is there but broken."""
        def checked(key, read):
            if key not in props:
                return None
            try:
                return read(props[key])
            except (ValueError, TypeError, KeyError) as error:
                raise ModelFileError(f"{path}: metadata key '{key}' is broken ({error}): {props[key][:200]!r}; "
                                     "export the model again with myTest.py") from None

        return cls(task=props.get("task"), unit=props.get("unit"), head=props.get("head"),
                   label_abs_max=checked("label_abs_max", positive_number),
                   pixel_size_um=checked("pixel_size_um", pixel_sizes) or {},
                   camera_pixel_um=checked("camera_pixel_um", positive_number),
                   error_model=checked("error_model", ErrorModel.from_metadata))


def positive_number(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a positive number, is {value}")
    return value


def pixel_sizes(text: str) -> dict:
    sizes = json.loads(text)
    if not isinstance(sizes, dict):
        raise ValueError("must be a JSON object of objective names and pixel sizes")
    return {str(name): positive_number(str(size)) for name, size in sizes.items()}


def read_metadata(session, path) -> ModelMetadata:
    """The checked metadata of an open session on the file at `path`."""
    return ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, path)


def write_metadata(onnx_path: Path, metadata: ModelMetadata) -> None:
    """Put `metadata` into the ONNX file at `onnx_path`, in place."""
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.helper.set_model_props(model, metadata.to_props())
    onnx.save(model, str(onnx_path))


def calibration_file(model_path) -> Path:
    """Where a microscope's calibration of a model is saved: beside it."""
    return Path(model_path).with_suffix(".calibration.json")


def write_calibration(model_path, objective: str | None, offset_um: float, details: dict) -> Path:
    """Save the offset a calibration found (and `details` of it, for people) beside the model."""
    path = calibration_file(model_path)
    with writing(path):
        path.write_text(json.dumps({"objective": objective, "offset_um": offset_um, **details}, indent=2) + "\n")
    return path


def calibrated_offset_um(model_path, objective: str | None) -> float:
    """The offset a saved calibration found for this model (and objective, for MOAF); 0 without one."""
    path = calibration_file(model_path)
    if not path.is_file():
        return 0.0
    try:
        saved = json.loads(path.read_text())
        return float(saved["offset_um"]) if saved.get("objective") == objective else 0.0
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"cannot read the calibration {path}: {error}") from None
