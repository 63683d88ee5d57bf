from __future__ import annotations

import pytest
import torch

from facekit.api import ArchOptions
from facekit.testing import check_architecture
from facekit_dlib.model import Center, CosineHead, DlibFaceClassifier, FrozenAffine
from facekit_dlib.plugin import DLIB_NORMALIZATION, build_dlib_resnet, register_architectures


def _specs():
    specs = []
    register_architectures(specs.append)
    return {s.name: s for s in specs}


def test_registered_spec():
    spec = _specs()["dlib-resnet"]
    assert spec.input_size == 150 and spec.pretrained
    assert spec.normalization == DLIB_NORMALIZATION
    # the loader's (pixel/255 - mean)/std is dlib's (pixel - m)/256
    px = 200.0
    got = (px / 255 - spec.normalization.mean[0]) / spec.normalization.std[0]
    assert got == pytest.approx((px - 122.782) / 256)
    assert "dlib-resnet-linear" in _specs()


@pytest.mark.parametrize("size", [224, 96, 150])
def test_random_init_builds_at_any_size(size):
    m = build_dlib_resnet(ArchOptions(num_classes=5, input_size=size, pretrained=False))
    m.eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, size, size))
    assert y.shape == (2, 5) and torch.isfinite(y).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dlib-resnet", "dlib-resnet-linear"])
def test_keeps_the_architecture_contract(name):
    check_architecture(name)


def _trainable(m):
    return {n for n, p in m.named_parameters() if p.requires_grad}


def test_frozen_trains_only_the_head(resnet_path):
    m = build_dlib_resnet(ArchOptions(num_classes=4, input_size=150))
    assert _trainable(m) == {n for n, _ in m.named_parameters() if n.startswith("head.")}
    assert isinstance(m.head.classifier, CosineHead)
    m.train()
    assert m.head.training and not m.backbone.training  # backbone stays in eval mode
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    head_before = m.head.classifier.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 3, 64, 64)), torch.arange(4))
    loss.backward()
    opt.step()
    assert not torch.equal(head_before, m.head.classifier.weight)
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(before[k], v), k


def test_finetune_trains_convs_but_not_affine(resnet_path):
    from facekit_dlib.weights import load_backbone
    from facekit_dlib.model import DlibResNet

    m = build_dlib_resnet(ArchOptions(num_classes=4, input_size=150, finetune=True))
    trainable = _trainable(m)
    assert "backbone.stem.conv.parametrizations.weight.original" in trainable
    assert "backbone.fc.parametrizations.weight.original" in trainable
    assert not any("affine" in n for n in trainable)
    affines = [mod for mod in m.modules() if isinstance(mod, FrozenAffine)]
    assert len(affines) == 29
    assert all(not list(a.parameters()) for a in affines)  # buffers, not parameters
    # before any step the effective weights are dlib's
    ref = load_backbone(DlibResNet())
    assert torch.equal(m.backbone.stem.conv.weight, ref.stem.conv.weight)
    m.train()
    assert m.backbone.training
    x = torch.randn(4, 3, 64, 64)  # any size works; small keeps the test quick
    with torch.no_grad():
        assert torch.allclose(m.backbone(x), ref(x), atol=1e-5)
    conv_before = m.backbone.blocks[13].c2.conv.weight.detach().clone()
    stem_before = m.backbone.stem.conv.weight.detach().clone()
    affine_before = {k: v.clone() for k, v in m.backbone.state_dict().items() if "affine" in k}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    loss = torch.nn.functional.cross_entropy(m(x), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    opt.step()
    step = (m.backbone.stem.conv.weight.detach() - stem_before).abs().max()
    assert 0 < step <= 1e-3 * 0.1 * 1.01  # the backbone moves 10x slower than the head
    assert not torch.equal(conv_before, m.backbone.blocks[13].c2.conv.weight)
    for k, v in m.backbone.state_dict().items():
        if k in affine_before:
            assert torch.equal(affine_before[k], v), k


def test_finetune_checkpoint_round_trip(resnet_path):
    """What `facekit report`/`predict` do: rebuild with pretrained=False, load the state dict."""
    m = build_dlib_resnet(ArchOptions(num_classes=3, input_size=150, finetune=True))
    with torch.no_grad():
        m.backbone.stem.conv.parametrizations.weight.original.add_(0.5)
    m.eval()
    x = torch.randn(2, 3, 64, 64)
    again = build_dlib_resnet(ArchOptions(num_classes=3, input_size=150, finetune=True, pretrained=False))
    again.load_state_dict(m.state_dict())
    again.eval()
    with torch.no_grad():
        assert torch.equal(m(x), again(x))


def test_linear_head_option():
    m = DlibFaceClassifier(7, head="linear")
    assert isinstance(m.head.classifier, torch.nn.Linear) and m.head.classifier.out_features == 7
    with pytest.raises(ValueError):
        DlibFaceClassifier(7, head="nope")


def test_center_tracks_training_mean_only():
    c = Center(3)
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    c.train()
    assert torch.allclose(c(x), x - torch.tensor([2.0, 3.0, 4.0]))  # first batch sets the mean
    c(x + 10)
    assert torch.allclose(c.running_mean, torch.tensor([2.5, 3.5, 4.5]))  # momentum 0.05
    c.eval()
    before = c.running_mean.clone()
    c(x + 100)
    assert torch.equal(before, c.running_mean)
