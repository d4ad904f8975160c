"""An exported autofocus model in ONNX Runtime, without torch: opening a session on the
fastest provider, checking that the file is a model this project exported, and what its
metadata records of its training. myTest.py and focus.py both open their models here.

    session = open_session(Path("model.onnx"))              # CPU; gpu=True tries TensorRT, then CUDA
    metadata = session.get_modelmeta().custom_metadata_map  # task, unit, head, label_abs_max
"""
from pathlib import Path

from cli import UserError
from imaging import IMAGE_SIZE

INPUT_NAMES = ("input", "params")  # the image (N,3,224,224); MOAF also the objective (N,2)
OUTPUT_NAMES = ("output", "distance", "p_positive")  # the signed defocus; the split head adds the other two


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
    image_shape = inputs.get("input", [None])[1:]
    if image_shape != [3, IMAGE_SIZE, IMAGE_SIZE] or "output" not in outputs or not set(inputs) <= set(INPUT_NAMES):
        raise ModelFileError(f"{path} is not an autofocus model exported by this project: it needs an input "
                             f"'input' of shape (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) (and 'params' for MOAF) and an "
                             f"output 'output'; it has inputs {inputs} and outputs {sorted(outputs)}")
