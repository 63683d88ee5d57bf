"""Fixtures for the facekit-dlib tests (markers and paths live in _dlib_testutil)."""

from __future__ import annotations

from pathlib import Path

import pytest

from _dlib_testutil import DATA, HAS_DLIB, HAS_MODELS, PER_IDENTITY


@pytest.fixture(scope="session")
def resnet_path() -> Path:
    if not HAS_MODELS:
        pytest.skip("face_recognition_models is not installed (pip install face-recognition-models)")
    from facekit_dlib.weights import RESNET_FILE, model_path

    return model_path(RESNET_FILE)


@pytest.fixture(scope="session")
def tiny_aligned(tmp_path_factory) -> Path:
    """A subset of lfw_tiny20 (PER_IDENTITY images per person) aligned with the 2-worker pool."""
    if not (HAS_DLIB and HAS_MODELS):
        pytest.skip("dlib and face_recognition_models are needed to align faces")
    if DATA is None:
        pytest.skip("shared LFW data (lfw_tiny20) not found; set FACEKIT_DATA")
    from facekit_dlib.align import run_align

    src = tmp_path_factory.mktemp("tiny_src")
    for ident in sorted((DATA / "lfw_tiny20").iterdir()):
        if not ident.is_dir():
            continue
        (src / ident.name).mkdir()
        for f in sorted(ident.glob("*.jpg"))[:PER_IDENTITY]:
            (src / ident.name / f.name).symlink_to(f)
    out = tmp_path_factory.mktemp("tiny_aligned")
    m = run_align(src, out, workers=2)
    assert m["unreadable"] == 0 and m["chips"] == m["images"]
    return out
