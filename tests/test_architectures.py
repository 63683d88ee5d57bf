"""Every registered architecture (plugins' included) is tested here without new test code."""

import pytest
import torch

from facekit.api import ArchOptions
from facekit.plugins import architectures
from facekit.models import BaselineNet, TronNet


@pytest.mark.slow
@pytest.mark.parametrize("name", architectures().names())
@pytest.mark.parametrize("input_size", [224, 96])
def test_architecture_builds_and_outputs_one_logit_per_class(name, input_size):
    spec = architectures().get(name)
    size = input_size if input_size != 224 else spec.input_size
    model = spec.build(ArchOptions(num_classes=7, input_size=size, pretrained=False)).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert any(p.requires_grad for p in model.parameters())


def test_study_flatten_widths_follow_the_input_size():
    assert BaselineNet(5, 224).classifier[1].in_features == 7 * 13 * 13 == 1183  # the report's number
    assert TronNet(5, 224).classifier[1].in_features == 10 * 22 * 22 == 4840  # the report said 1210


def test_last_layer_is_linear_logits_with_no_relu_or_softmax():
    for model in (BaselineNet(201, 224), TronNet(201, 224)):
        assert isinstance(model.classifier[-1], torch.nn.Linear) and model.classifier[-1].out_features == 201


def test_tronnet_uses_xavier_initialisation():
    torch.manual_seed(0)
    conv = TronNet(5, 96).features[2]  # Conv(21 -> 30)
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    weight = conv.weight.detach()
    assert weight.abs().max() <= bound
    assert float(weight.std()) == pytest.approx(bound / 3**0.5, rel=0.15)
    assert torch.all(conv.bias == 0)
