"""SOAFModel layout and shapes, ONNX export with a working dynamic batch, and weight loading."""
import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn

import myModel
from conftest import run_script
from myModel import ModelCreationError, SOAFModel, export_onnx


@pytest.fixture(scope="module")
def model() -> SOAFModel:
    torch.manual_seed(0)
    return SOAFModel(pretrained=False).eval()


def test_output_shape(model):
    with torch.no_grad():
        assert model(torch.randn(3, 3, 224, 224)).shape == (3, 1)


def test_head_layout(model):
    layers = list(model.fc)
    assert [type(layer) for layer in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU,
                                                 nn.Dropout, nn.Linear]
    assert [(layer.in_features, layer.out_features) for layer in layers if isinstance(layer, nn.Linear)] == [
        (960, 256), (256, 128), (128, 1)]
    assert all(layer.p == 0.5 for layer in layers if isinstance(layer, nn.Dropout))
    assert isinstance(model.global_pool, nn.AdaptiveAvgPool2d)


def test_whole_extractor_is_used(model):
    """out_indices=(-1,): the features come from the deepest stage, at 1/32 of the input size."""
    assert model.feature_extractor.feature_info.reduction() == [32]
    assert model.feature_extractor(torch.randn(1, 3, 224, 224))[-1].shape == (1, 960, 7, 7)


def test_head_width_follows_the_backbone():
    assert SOAFModel("resnet18", pretrained=False).fc[0].in_features == 512


def test_onnx_has_a_working_dynamic_batch(model, tmp_path):
    path = export_onnx(model, tmp_path / "sub" / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    images = torch.randn(3, 3, 224, 224)  # not the batch of 1 the export traced with
    (onnx_output,) = session.run(None, {"input": images.numpy()})
    with torch.no_grad():
        torch_output = model(images).numpy()
    assert onnx_output.shape == (3, 1)
    np.testing.assert_allclose(onnx_output, torch_output, atol=1e-4, rtol=1e-4)


def test_export_leaves_training_mode_as_it_was(tmp_path):
    model = SOAFModel(pretrained=False).train()
    export_onnx(model, tmp_path / "model.onnx")
    assert model.training


def test_unknown_backbone_is_named():
    with pytest.raises(ModelCreationError, match="unknown timm model 'mobilenetv9_tiny'"):
        SOAFModel("mobilenetv9_tiny", pretrained=False)


def test_unreachable_hub_gives_instructions(monkeypatch):
    monkeypatch.setattr(myModel, "hub_is_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(myModel, "cached_weights_file", lambda name: None)
    with pytest.raises(ModelCreationError) as caught:
        SOAFModel(pretrained=True)
    assert "--no-pretrained" in str(caught.value) and "--pretrained_file" in str(caught.value)


def test_local_weights_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    donor = timm.create_model("mobilenetv4_conv_small", pretrained=False)
    weights = tmp_path / "mobilenetv4_conv_small.pth"
    torch.save(donor.state_dict(), weights)
    model = SOAFModel(pretrained=True, pretrained_file=str(weights))
    torch.testing.assert_close(model.feature_extractor.state_dict()["conv_stem.weight"],
                               donor.state_dict()["conv_stem.weight"])


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ModelCreationError, match="nowhere.pth does not exist"):
        SOAFModel(pretrained=True, pretrained_file=str(tmp_path / "nowhere.pth"))


def test_model_script_prints_summary_shape_and_writes_onnx(tmp_path):
    result = run_script("myModel.py", "--onnx_path", tmp_path / "graph.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Total params" in result.stdout
    assert "test output shape: (1, 1)" in result.stdout
    assert (tmp_path / "graph.onnx").stat().st_size > 100_000
