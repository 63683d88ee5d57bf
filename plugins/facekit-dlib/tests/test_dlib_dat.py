from __future__ import annotations

import shutil

import numpy as np
import pytest

from facekit.api import FacekitError
from facekit_dlib.dat import DatFormatError, parse_dat, read_dat
from facekit_dlib.weights import KNOWN_FILES, RESNET_FILE, parsed_resnet, resnet_state


def test_parser_consumes_whole_file(resnet_path):
    net = read_dat(resnet_path)
    assert net.size == KNOWN_FILES[RESNET_FILE][0] == 22_466_066
    assert net.bytes_read == net.size
    assert net.loss["type"] == "loss_metric_2"
    assert net.loss["dist_thresh"] == pytest.approx(0.6)
    assert net.input["type"] == "input_rgb_image_sized"
    assert (net.input["nr"], net.input["nc"]) == (150, 150)
    assert net.input["avg"] == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert len(net.of_type("con_")) == 29 and len(net.of_type("affine_")) == 29
    state = resnet_state(net)
    total = sum(v.size for v in state.values())
    assert total == 5_614_592  # dlib's documented parameter count, affine included
    assert all(v.dtype == np.float32 for v in state.values())


def test_parse_is_cached(resnet_path):
    assert parsed_resnet(resnet_path) is parsed_resnet(resnet_path)


def test_truncated_or_garbage_is_a_format_error(resnet_path):
    buf = resnet_path.read_bytes()
    with pytest.raises(DatFormatError):
        parse_dat(buf[: len(buf) // 2])
    with pytest.raises(DatFormatError):
        parse_dat(b"\x01\x01" + b"\xff" * 64)
    with pytest.raises(DatFormatError):
        parse_dat(b"")


def test_wrong_hash_is_refused_unless_trusted(resnet_path, tmp_path):
    from facekit.api import ArchOptions
    from facekit_dlib.plugin import build_dlib_resnet

    bad = tmp_path / "tampered.dat"
    shutil.copyfile(resnet_path, bad)
    with open(bad, "r+b") as fh:  # flip one byte deep inside a weight tensor
        fh.seek(KNOWN_FILES[RESNET_FILE][0] // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(FacekitError, match="sha256"):
        build_dlib_resnet(ArchOptions(num_classes=3, input_size=150, weights=bad))
    model = build_dlib_resnet(ArchOptions(num_classes=3, input_size=150, weights=bad,
                                          trust_weights=True))
    assert model is not None

    short = tmp_path / "short.dat"
    short.write_bytes(resnet_path.read_bytes()[:1000])
    with pytest.raises(FacekitError, match="expected 22466066"):
        build_dlib_resnet(ArchOptions(num_classes=3, weights=short))
    with pytest.raises(FacekitError, match="not a dlib face ResNet"):
        build_dlib_resnet(ArchOptions(num_classes=3, weights=short, trust_weights=True))
    with pytest.raises(FacekitError, match="not found"):
        build_dlib_resnet(ArchOptions(num_classes=3, weights=tmp_path / "nope.dat"))


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    from facekit.api import ArchOptions
    from facekit_dlib.plugin import build_dlib_resnet

    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name == "face_recognition_models" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(FacekitError, match="pip install face-recognition-models") as info:
        build_dlib_resnet(ArchOptions(num_classes=3))
    assert "\n" not in str(info.value)
