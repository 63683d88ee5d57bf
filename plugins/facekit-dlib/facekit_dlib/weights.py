"""Find, verify and load the dlib model files shipped by ``face-recognition-models``.

Nothing is downloaded: the files come from the installed ``face_recognition_models`` package
(found with importlib, without importing it: its ``__init__`` needs ``pkg_resources``, which
setuptools >= 81 removed) or from an explicit path.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

from facekit.api import FacekitError, verify_sha256

from facekit_dlib.dat import DatFormatError, DlibNet, read_dat

RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE5_FILE = "shape_predictor_5_face_landmarks.dat"

# As shipped in face-recognition-models 0.3.0 (the files dlib.net publishes, decompressed).
KNOWN_FILES = {
    RESNET_FILE: (22_466_066, "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"),
    SHAPE5_FILE: (9_150_489, "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"),
}

INSTALL_HINT = "pip install face-recognition-models"


def models_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FacekitError(f"dlib's model files are not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_path(name: str, override: Path | str | None = None) -> Path:
    path = Path(override) if override is not None else models_dir() / name
    if not path.is_file():
        if override is not None:
            raise FacekitError(f"weights file not found: {path}")
        raise FacekitError(f"{name} is missing from face_recognition_models: {INSTALL_HINT}")
    return path


def verify(path: Path, name: str, trust: bool = False) -> None:
    """Refuse a file whose size or sha256 is not the published one, unless ``trust``."""
    if trust:
        return
    size, digest = KNOWN_FILES[name]
    actual_size = path.stat().st_size
    if actual_size != size:  # cheaper than hashing, and says more
        raise FacekitError(
            f"{path} is not {name} ({actual_size} bytes, expected {size}); "
            "pass --trust-weights to use it anyway"
        )
    verify_sha256(path, digest, trust=False, published=name, option=None,
                  fix="pass --trust-weights to use it anyway")


@functools.lru_cache(maxsize=4)
def _parsed(path: str, size: int, mtime_ns: int) -> DlibNet:
    try:
        return read_dat(path)
    except DatFormatError as exc:
        raise FacekitError(f"{path}: not a dlib face ResNet file ({exc})") from None


def parsed_resnet(path: Path) -> DlibNet:
    """The parsed .dat (cached per path, size and modification time)."""
    st = os.stat(path)
    return _parsed(str(path), st.st_size, st.st_mtime_ns)


def resnet_state(net: DlibNet) -> dict[str, np.ndarray]:
    """Map a parsed dlib ResNet onto :class:`~facekit_dlib.model.DlibResNet`'s state_dict keys."""
    from facekit_dlib.model import PLAN

    # the torch module's conv/affine order: stem, then (c1, c2) of every block
    names = ["stem"] + [f"blocks.{i}.{c}" for i in range(len(PLAN)) for c in ("c1", "c2")]
    convs, affs, fcs = net.of_type("con_"), net.of_type("affine_"), net.of_type("fc_")
    if not (len(convs) == len(affs) == len(names) and len(fcs) == 1):
        raise FacekitError(
            f"unexpected network: {len(convs)} conv / {len(affs)} affine / {len(fcs)} fc layers "
            f"(dlib's face ResNet has {len(names)} / {len(names)} / 1)"
        )
    expected = [(3, 32, 7, 2)] + [
        (a if j == 0 else b, b, 3, 2 if (d and j == 0) else 1)
        for a, b, d in PLAN for j in (0, 1)
    ]
    state: dict[str, np.ndarray] = {}
    for name, conv, aff, (cin, cout, k, stride) in zip(names, convs, affs, expected):
        if tuple(conv["filters"]) != (cout, cin, k, k) or conv["stride"] != (stride, stride):
            raise FacekitError(f"unexpected conv layer {conv['filters']} at {name}")
        p = conv["params"].reshape(-1)
        nw = cout * cin * k * k
        if p.size != nw + cout:
            raise FacekitError(f"unexpected conv parameter count at {name}")
        state[f"{name}.conv.weight"] = p[:nw].reshape(cout, cin, k, k)
        state[f"{name}.conv.bias"] = p[nw:]
        a = aff["params"].reshape(-1)
        if a.size != 2 * cout:
            raise FacekitError(f"unexpected affine layer at {name}")
        state[f"{name}.affine.weight"] = a[:cout]
        state[f"{name}.affine.bias"] = a[cout:]
    fc = fcs[0]
    if (fc["num_inputs"], fc["num_outputs"]) != (256, 128) or fc["bias_mode"] != 1:
        raise FacekitError("unexpected final fc layer (expected 256 -> 128 without bias)")
    # dlib computes out = x @ W with W stored inputs x outputs; torch wants outputs x inputs
    state["fc.weight"] = np.ascontiguousarray(fc["params"].reshape(256, 128).T)
    return state


def load_backbone(module, path: Path | None = None, trust: bool = False):
    """Load dlib's weights into a :class:`DlibResNet` (located and verified as above)."""
    import torch

    path = model_path(RESNET_FILE, path)
    verify(path, RESNET_FILE, trust)
    net = parsed_resnet(path)
    state = {k: torch.from_numpy(v.copy()) for k, v in resnet_state(net).items()}
    module.load_state_dict(state, strict=True)
    return module
