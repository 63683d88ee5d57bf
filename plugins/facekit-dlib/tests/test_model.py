from __future__ import annotations

import time

import pytest
import torch

from facekit.api import ArchOptions
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
def test_random_init_builds_fast_at_any_size(size):
    t0 = time.perf_counter()
    m = build_dlib_resnet(ArchOptions(num_classes=5, input_size=size, pretrained=False))
    assert time.perf_counter() - t0 < 5
    m.eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, size, size))
    assert y.shape == (2, 5) and torch.isfinite(y).all()


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
    loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 3, 150, 150)), torch.arange(4))
    loss.backward()
    opt.step()
    assert not torch.equal(head_before, m.head.classifier.weight)
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(before[k], v), k


def test_finetune_trains_convs_but_not_affine(resnet_path):
    m = build_dlib_resnet(ArchOptions(num_classes=4, input_size=150, finetune=True))
    trainable = _trainable(m)
    assert "backbone.stem.conv.weight" in trainable and "backbone.fc.weight" in trainable
    assert not any("affine" in n for n in trainable)
    affines = [mod for mod in m.modules() if isinstance(mod, FrozenAffine)]
    assert len(affines) == 29
    assert all(not list(a.parameters()) for a in affines)  # buffers, not parameters
    m.train()
    assert m.backbone.training
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 3, 150, 150)), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    opt.step()
    after = m.backbone.state_dict()
    assert not torch.equal(before["stem.conv.weight"], after["stem.conv.weight"])
    assert not torch.equal(before["blocks.13.c2.conv.weight"], after["blocks.13.c2.conv.weight"])
    for k in before:
        if "affine" in k:
            assert torch.equal(before[k], after[k]), k


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
