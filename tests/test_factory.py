"""create_model: every registered architecture built from its name, the one way facekit builds models."""

import pytest
import torch

from facekit.errors import UsageError
from facekit.factory import create_model
from facekit.models import BaselineNet
from facekit.plugins import architectures


@pytest.mark.slow
@pytest.mark.parametrize("name", architectures().names())
def test_every_architecture_builds_at_its_declared_size_and_outputs_logits(name):
    spec = architectures().get(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, pretrained=False).eval()  # no download here
    with torch.no_grad():
        logits = model(torch.randn(2, 3, spec.input_size, spec.input_size))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_input_size_reaches_the_builder():
    model = create_model("baseline", num_classes=3, input_size=96)
    assert model.classifier[1].in_features == BaselineNet(3, 96).classifier[1].in_features != BaselineNet(3, 224).classifier[1].in_features
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 3)


@pytest.mark.parametrize("finetune", [False, True])
def test_resnet18_finetune_decides_what_trains(finetune):
    model = create_model("resnet18", num_classes=4, finetune=finetune, pretrained=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert model.fc.out_features == 4
    if finetune:
        assert trainable == {name for name, _ in model.named_parameters()}
    else:
        assert trainable == {"fc.weight", "fc.bias"}


def test_device_and_channels_last():
    model = create_model("baseline", num_classes=3, input_size=64, device="cpu", channels_last=True)
    conv = model.features[0].weight
    assert conv.device.type == "cpu"
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_unknown_name_is_a_usage_error_naming_the_known_ones():
    with pytest.raises(UsageError, match="'tronet' is not known.*tronnet"):
        create_model("tronet", num_classes=3)
