"""The torch port against dlib itself, on chips aligned by `facekit align`'s code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facekit_dlib.plugin import DLIB_NORMALIZATION

from _dlib_testutil import needs_data, needs_dlib, needs_models

pytestmark = [needs_dlib, needs_models, needs_data]


def _load(tiny_aligned):
    files = sorted(tiny_aligned.glob("*/*.jpg"))
    chips = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([f.parent.name for f in files])
    return chips, labels


def _normalise(chips: np.ndarray) -> torch.Tensor:
    """What facekit's loader does with the architecture's declared normalization."""
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(DLIB_NORMALIZATION.mean).view(1, 3, 1, 1)
    std = torch.tensor(DLIB_NORMALIZATION.std).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.fixture(scope="module")
def backbone(resnet_path):
    from facekit.api import ArchOptions
    from facekit_dlib.plugin import build_dlib_resnet

    torch.set_num_threads(2)
    return build_dlib_resnet(ArchOptions(num_classes=2, input_size=150)).eval()


def test_descriptors_match_dlib(tiny_aligned, backbone, resnet_path):
    import dlib

    chips, _ = _load(tiny_aligned)
    chips = chips[:: max(1, len(chips) // 8)][:8]  # 8 chips across identities
    assert chips.shape[1:] == (150, 150, 3)
    rec = dlib.face_recognition_model_v1(str(resnet_path))
    ref = np.array([np.array(rec.compute_face_descriptor(c)) for c in chips])
    with torch.no_grad():
        ours = backbone.embed(_normalise(chips)).numpy()
    assert ours.shape == (len(chips), 128)
    assert np.abs(ours - ref).max() < 1e-4


def test_backbone_separates_identities(tiny_aligned, backbone):
    chips, labels = _load(tiny_aligned)
    with torch.no_grad():
        e = torch.cat([backbone.embed(_normalise(chips[i:i + 64]))
                       for i in range(0, len(chips), 64)]).numpy()
    d = ((e[:, None] - e[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    acc = (labels[d.argmin(1)] == labels).mean()  # leave-one-out 1-NN
    chance = 1 / len(set(labels))
    assert acc > 0.9, acc  # chance is 0.05 for 20 people
    assert acc > 10 * chance
    # dlib's own rule: same person when the distance is below 0.6
    same = labels[:, None] == labels[None]
    off = ~np.eye(len(labels), dtype=bool)
    assert (d[same & off] ** 0.5 < 0.6).mean() > 0.9
    assert (d[~same] ** 0.5 >= 0.6).mean() > 0.95
