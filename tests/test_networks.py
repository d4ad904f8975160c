"""networks.py: both models and both heads (layout, shapes, target scaling, FiLM conditioning, HeadOutputs),
ONNX export (dynamic batch; a static graph that ONNX's checker, its reference evaluator and OpenCV's
DNN module accept with ONNX Runtime's predictions), int8 quantisation, unknown backbones, offline
pretrained weights, the myModel.py script."""
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn

from autofocuskit import networks
from autofocuskit.datasets import SOAFDataset
from autofocuskit.exported_model import open_session
from autofocuskit.imaging import IMAGE_SIZE
from autofocuskit.networks import (
    MOAFModel,
    ModelCreationError,
    SOAFModel,
    export_onnx,
    normalise_objective,
    quantization_feeds,
    quantize_onnx,
)
from autofocuskit.schema import DEFAULT_BACKBONE

# channels of the default backbone's last stage: the head's input width
BACKBONE_WIDTH = timm.create_model(DEFAULT_BACKBONE, pretrained=False, features_only=True).feature_info.channels()[-1]


@pytest.fixture(scope="module")
def model() -> SOAFModel:
    torch.manual_seed(0)
    return SOAFModel(pretrained=False).eval()


def test_output_shape(model):
    with torch.no_grad():
        assert model(torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (3, 1)


def test_head_layout(model):
    layers = list(model.fc)
    assert [type(layer) for layer in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU,
                                                 nn.Dropout, nn.Linear]
    assert [(layer.in_features, layer.out_features) for layer in layers if isinstance(layer, nn.Linear)] == [
        (BACKBONE_WIDTH, 256), (256, 128), (128, 1)]
    assert all(layer.p == 0.5 for layer in layers if isinstance(layer, nn.Dropout))
    assert isinstance(model.global_pool, nn.AdaptiveAvgPool2d)


def test_whole_extractor_is_used(model):
    """out_indices=(-1,): the features come from the deepest stage, at 1/32 of the input size."""
    assert model.feature_extractor.feature_info.reduction() == [32]
    assert model.feature_extractor(torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE))[-1].shape == (1, BACKBONE_WIDTH, IMAGE_SIZE // 32, IMAGE_SIZE // 32)


def test_head_width_follows_the_backbone():
    assert SOAFModel("resnet18", pretrained=False).fc[0].in_features == 512


def test_onnx_has_a_working_dynamic_batch(model, tmp_path):
    path = export_onnx(model, tmp_path / "sub" / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)  # not the batch of 1 the export traced with
    (onnx_output,) = session.run(None, {"input": images.numpy()})
    with torch.no_grad():
        torch_output = model(images).numpy()
    assert onnx_output.shape == (3, 1)
    np.testing.assert_allclose(onnx_output, torch_output, atol=1e-4, rtol=1e-4)


def test_export_leaves_training_mode_as_it_was(tmp_path):
    model = SOAFModel(pretrained=False).train()
    export_onnx(model, tmp_path / "model.onnx")
    assert model.training


def test_unknown_backbone_is_named_with_close_names():
    with pytest.raises(ModelCreationError, match="unknown timm model 'mobilenetv9_tiny'"):
        SOAFModel("mobilenetv9_tiny", pretrained=False)
    with pytest.raises(ModelCreationError, match=rf"close names: \['{DEFAULT_BACKBONE}'"):
        SOAFModel(DEFAULT_BACKBONE[:-1], pretrained=False)


def test_unreachable_hub_gives_instructions(monkeypatch):
    monkeypatch.setattr(networks, "hub_is_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(networks, "cached_weights_file", lambda name: None)
    with pytest.raises(ModelCreationError) as caught:
        SOAFModel(pretrained=True)
    assert "--no-pretrained" in str(caught.value) and "--pretrained_file" in str(caught.value)


def test_local_weights_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    donor = timm.create_model(DEFAULT_BACKBONE, pretrained=False)
    weights = tmp_path / f"{DEFAULT_BACKBONE}.pth"
    torch.save(donor.state_dict(), weights)
    model = SOAFModel(pretrained=True, pretrained_file=str(weights))
    torch.testing.assert_close(model.feature_extractor.state_dict()["conv_stem.weight"],
                               donor.state_dict()["conv_stem.weight"])


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ModelCreationError, match="nowhere.pth does not exist"):
        SOAFModel(pretrained=True, pretrained_file=str(tmp_path / "nowhere.pth"))


@pytest.fixture(scope="module")
def moaf_model() -> MOAFModel:
    torch.manual_seed(0)
    return MOAFModel(pretrained=False).eval()


def test_moaf_shapes_and_shared_backbone(moaf_model):
    params = torch.tensor([[10.0, 0.3], [20.0, 0.7], [40.0, 0.95]])
    with torch.no_grad():
        assert moaf_model(torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE), params).shape == (3, 1)
    soaf = SOAFModel(pretrained=False)
    shapes = [{name: tensor.shape for name, tensor in model.feature_extractor.state_dict().items()}
              for model in (moaf_model, soaf)]
    assert shapes[0] == shapes[1]  # the same backbone, layer for layer
    assert moaf_model.fc[0].in_features == soaf.fc[0].in_features == BACKBONE_WIDTH


def test_objective_parameters_are_normalised_inside_the_model():
    objectives = torch.tensor([[4.0, 0.1], [10.0, 0.3], [20.0, 0.7], [60.0, 1.4], [100.0, 1.4]])
    normalised = normalise_objective(objectives)
    assert normalised.abs().max() < 2.0  # raw values span 0.1 to 100
    assert normalised[:, 0].diff().gt(0).all()  # the order of magnifications is kept
    assert normalised[1:3].abs().max() < 1.0  # common objectives sit near the centre


def test_moaf_output_depends_on_the_objective():
    torch.manual_seed(2)
    moaf_model = MOAFModel(pretrained=False).eval()
    for layer in moaf_model.film:  # training moves FiLM away from its identity start
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.5)
    image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE).repeat(2, 1, 1, 1)
    with torch.no_grad():
        output = moaf_model(image, torch.tensor([[10.0, 0.3], [20.0, 0.7]]))
    assert output[0] != output[1]


def test_moaf_onnx_has_two_named_inputs_and_a_dynamic_batch(moaf_model, tmp_path):
    path = export_onnx(moaf_model, tmp_path / "moaf.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input", "params"]
    images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    params = torch.tensor([[10.0, 0.3], [20.0, 0.7], [40.0, 0.95], [100.0, 1.4]])
    (onnx_output,) = session.run(None, {"input": images.numpy(), "params": params.numpy()})
    with torch.no_grad():
        torch_output = moaf_model(images, params).numpy()
    assert onnx_output.shape == (4, 1)
    np.testing.assert_allclose(onnx_output, torch_output, atol=1e-4, rtol=1e-4)


def test_offline_failure_is_fast(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # a name that never resolves
    monkeypatch.setattr(networks, "cached_weights_file", lambda name: None)
    start = time.perf_counter()
    with pytest.raises(ModelCreationError, match="--no-pretrained"):
        SOAFModel(pretrained=True)
    assert time.perf_counter() - start < 10


def test_target_scale_maps_the_head_output_to_physical_units(tmp_path):
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False).eval()
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        unit_scale = model(images)
    model.set_target_scale(torch.tensor([-30.0, -10.0, 2.0, 10.0, 40.0]))
    assert model.target_center.item() == 2.0  # the median
    assert model.target_scale.item() == pytest.approx((32 + 12 + 0 + 8 + 38) / 5)  # mean |label - median|
    with torch.no_grad():
        torch.testing.assert_close(model(images), 2.0 + 18.0 * unit_scale)
    assert {"target_center", "target_scale"} <= set(model.state_dict())

    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "scaled.onnx")),
                                   providers=["CPUExecutionProvider"])
    (onnx_output,) = session.run(None, {"input": images.numpy()})
    np.testing.assert_allclose(onnx_output, model(images).detach().numpy(), atol=1e-3)


def test_constant_labels_leave_the_scale_at_one():
    model = SOAFModel(pretrained=False)
    model.set_target_scale(torch.full((4,), 3.0))
    assert (model.target_center.item(), model.target_scale.item()) == (3.0, 1.0)


ALL_MODELS = [(SOAFModel, "signed"), (SOAFModel, "split"), (MOAFModel, "signed"), (MOAFModel, "split")]


def exported_with_runtime_outputs(model_class, head, tmp_path):
    """(ONNX path, batch-2 feeds, ONNX Runtime's outputs) of a fresh model of the class and head."""
    torch.manual_seed(0)
    model = model_class(pretrained=False, head=head).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    feeds = {name: tensor.numpy() for name, tensor in zip(model.input_names, model.example_inputs(2))}
    runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    return path, feeds, runtime


@pytest.mark.parametrize("model_class, head", ALL_MODELS)
def test_onnx_graph_is_static_and_runs_in_the_reference_evaluator(model_class, head, tmp_path):
    """No shape arithmetic outside the batch axis (runtimes embedded in microscope software refuse
    it), a graph that passes ONNX's full check, and ONNX's own reference implementation agreeing
    with ONNX Runtime."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    path, feeds, runtime = exported_with_runtime_outputs(model_class, head, tmp_path)
    graph = onnx.load(path)
    onnx.checker.check_model(graph, full_check=True)
    assert not {"Shape", "Gather", "Flatten"} & {node.op_type for node in graph.graph.node}
    reference = ReferenceEvaluator(graph).run(None, feeds)
    assert len(reference) == len(runtime)
    for ours, theirs in zip(reference, runtime):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("model_class, head", ALL_MODELS)
def test_onnx_model_runs_in_opencv_dnn(model_class, head, tmp_path):
    """OpenCV's DNN module (4.x), which microscope software often embeds, loads the file and
    agrees with ONNX Runtime on every output, at a batch of two."""
    import cv2
    path, feeds, runtime = exported_with_runtime_outputs(model_class, head, tmp_path)
    net = cv2.dnn.readNetFromONNX(str(path))
    for name, value in feeds.items():
        net.setInput(value, name)
    names = [output.name for output in ort.InferenceSession(str(path)).get_outputs()]
    opencv = net.forward(names)
    assert len(opencv) == len(runtime)
    for ours, theirs in zip(opencv, runtime):
        np.testing.assert_allclose(ours.reshape(theirs.shape), theirs, atol=1e-4)


@pytest.fixture(scope="module")
def split_model() -> SOAFModel:
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False, head="split").eval()
    model.set_target_scale(torch.tensor([-20.0, -5.0, 5.0, 20.0]))
    return model


def test_split_head_ends_in_two_outputs(split_model):
    linear_layers = [layer for layer in split_model.fc if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear_layers] == [(BACKBONE_WIDTH, 256), (256, 128), (128, 2)]


def test_signed_prediction_is_the_distance_on_the_likelier_side(split_model):
    torch.manual_seed(1)
    images = torch.rand(6, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        signed, distance, p_positive, regression = split_model(images, all_outputs=True)
        torch.testing.assert_close(split_model(images), signed)
    assert signed.shape == distance.shape == p_positive.shape == regression.shape == (6, 1)
    assert (distance >= 0).all() and ((p_positive > 0) & (p_positive < 1)).all()
    torch.testing.assert_close(signed, torch.where(p_positive >= 0.5, distance, -distance))


def test_signed_head_outputs_all_follow_from_its_prediction():
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False).eval()
    model.set_target_scale(torch.tensor([-20.0, -5.0, 5.0, 20.0]))  # centre 0: predictions of both signs
    images = torch.rand(8, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        outputs = model(images, all_outputs=True)
    torch.testing.assert_close(outputs.defocus, model(images))
    torch.testing.assert_close(outputs.regression, outputs.defocus)
    torch.testing.assert_close(outputs.distance, outputs.defocus.abs())
    assert ((outputs.p_positive == 1) == (outputs.defocus > 0)).all() and set(outputs.p_positive.view(-1).tolist()) <= {0.0, 1.0}
    assert len(model.exported_outputs(outputs)) == 1


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="head must be one of"):
        SOAFModel(pretrained=False, head="double")


@pytest.mark.parametrize("model_class", [SOAFModel, MOAFModel])
def test_split_head_onnx_has_three_named_outputs_matching_pytorch(model_class, tmp_path):
    torch.manual_seed(0)
    model = model_class(pretrained=False, head="split").eval()
    model.set_target_scale(torch.tensor([-3.0, 0.0, 3.0]))
    path = export_onnx(model, tmp_path / "split.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["output", "distance", "p_positive"]
    inputs = model.example_inputs(3)
    with torch.no_grad():
        outputs = model(*inputs, all_outputs=True)
        expected = [outputs.defocus.numpy(), outputs.distance.numpy(), outputs.p_positive.numpy()]
    got = session.run(None, {name: tensor.numpy() for name, tensor in zip(model.input_names, inputs)})
    for ours, theirs in zip(got, expected):
        assert ours.shape == (3, 1)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_int8_model_is_quantised_and_close_to_fp32(demo_root, tmp_path):
    torch.manual_seed(0)
    model = SOAFModel(pretrained=False).eval()
    model.set_target_scale(torch.tensor([-20.0, 0.0, 20.0]))
    fp32_path = export_onnx(model, tmp_path / "model.onnx")
    train = SOAFDataset(demo_root, "train")
    int8_path = quantize_onnx(fp32_path, quantization_feeds(train, 8, ["input"]), tmp_path / "model_int8.onnx")
    graph = onnx.load(str(int8_path)).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) >= 10
    assert any(node.op_type == "Gemm" for node in graph.node)  # the head stays in fp32

    images = np.stack([SOAFDataset(demo_root, "test")[index][0].numpy() for index in range(8)])
    fp32, int8 = (open_session(path).run(None, {"input": images})[0]
                  for path in (fp32_path, int8_path))
    # an untrained network, whose activations the calibration images fit poorly: within 10% of the
    # output; myTest.py --quantize reports the error of a trained one against the labels
    np.testing.assert_allclose(int8, fp32, rtol=0.1)
