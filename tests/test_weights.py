"""Pretrained weights: explicit files are hash-checked, offline absence is one clear error."""

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from facekit.api import ArchOptions
from facekit.errors import FacekitError
from facekit.plugins import architectures


@pytest.fixture
def imagenet_like_state_dict(tmp_path) -> Path:
    """A ResNet18 state dict written by the test (the real file cannot be downloaded here)."""
    torch.manual_seed(0)
    path = tmp_path / "my-resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def build(**options):
    return architectures().get("resnet18").build(ArchOptions(num_classes=4, input_size=64, **options))


def test_weights_file_with_wrong_hash_is_refused(imagenet_like_state_dict):
    with pytest.raises(FacekitError, match=r"does not match the published resnet18-f37072fd.pth .*--trust-weights"):
        build(weights=imagenet_like_state_dict)


def test_trusted_weights_file_is_loaded_and_backbone_frozen(imagenet_like_state_dict):
    model = build(weights=imagenet_like_state_dict, trust_weights=True)
    reference = torch.load(imagenet_like_state_dict, weights_only=True)
    assert torch.equal(model.conv1.weight, reference["conv1.weight"])
    assert model.fc.out_features == 4
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    finetuned = build(weights=imagenet_like_state_dict, trust_weights=True, finetune=True)
    assert all(p.requires_grad for p in finetuned.parameters())


def test_cached_file_with_the_published_hash_is_used_offline(imagenet_like_state_dict, tmp_path, monkeypatch):
    import facekit.weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(imagenet_like_state_dict.read_bytes())
    digest = facekit.weights.file_sha256(imagenet_like_state_dict)
    # Pretend our file is the published one: the same check, with its own hash prefix.
    monkeypatch.setattr(facekit.weights, "published_hash_prefix", lambda url: digest[:8])
    model = build()
    assert torch.equal(model.conv1.weight, torch.load(imagenet_like_state_dict, weights_only=True)["conv1.weight"])


def test_missing_weights_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    import torchvision.models._api as weights_api

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    with pytest.raises(FacekitError) as error:
        build()
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "--weights FILE" in message
