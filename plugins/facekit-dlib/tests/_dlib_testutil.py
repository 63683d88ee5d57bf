"""Markers and paths shared by the facekit-dlib tests. Tests that need dlib, the installed model files or the shared LFW data skip
with a reason when those are absent."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DATA_CANDIDATES = [
    os.environ.get("FACEKIT_DATA", ""),
    str(REPO.parent / "shared" / "data"),  # a checkout beside the shared data (../shared/data)
]


def _data_root() -> Path | None:
    for c in DATA_CANDIDATES:
        if c and (Path(c) / "lfw_tiny20").is_dir():
            return Path(c)
    return None


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


HAS_DLIB = _has("dlib")
HAS_MODELS = _has("face_recognition_models")
DATA = _data_root()

needs_dlib = pytest.mark.skipif(not HAS_DLIB, reason="dlib is not installed (pip install dlib-bin)")
needs_models = pytest.mark.skipif(
    not HAS_MODELS, reason="face_recognition_models is not installed "
    "(pip install face-recognition-models)")
needs_data = pytest.mark.skipif(
    DATA is None, reason="shared LFW data (lfw_tiny20) not found; set FACEKIT_DATA")

PER_IDENTITY = 5  # images per lfw_tiny20 identity used by the aligned-chip tests
