"""Pretrained weights files: hashing, verification, and torchvision's weights API offline.

Plugins use these too, so every architecture refuses a tampered file the same way.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from facekit.errors import FacekitError


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def published_hash_prefix(url: str) -> str:
    """torch.hub's convention: ``name-<first hex digits of the sha256>.pth``."""
    match = re.search(r"-([a-f0-9]+)\.", Path(url).name)
    if not match:
        raise ValueError(f"no hash in weights file name {url}")
    return match.group(1)


def verify_weights_file(path: Path, url: str, *, trust: bool) -> None:
    """Refuse a weights file whose sha256 is not the published one, unless the user vouches for it."""
    if not path.is_file():
        raise FacekitError(f"--weights {path}: no such file")
    expected = published_hash_prefix(url)
    actual = file_sha256(path)
    if not actual.startswith(expected) and not trust:
        raise FacekitError(
            f"--weights {path}: sha256 {actual[:16]}... does not match the published {Path(url).name} "
            f"(sha256 {expected}...); pass --trust-weights to use a file of your own"
        )


def load_torchvision_weights(weights_enum, explicit: Path | None, *, trust: bool) -> dict:
    """A torchvision weights entry's state dict: ``explicit`` file, else the TORCH_HOME cache, else a download."""
    url = weights_enum.url
    if explicit is not None:
        verify_weights_file(Path(explicit), url, trust=trust)
        return torch.load(explicit, map_location="cpu", weights_only=True)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        verify_weights_file(cached, url, trust=trust)
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:  # torchvision's weights API: downloads into the same cache, checking the hash
        return weights_enum.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # offline: URLError, socket errors, ...
        raise FacekitError(
            f"pretrained weights {Path(url).name} are not in the cache and could not be downloaded "
            f"({exc.__class__.__name__}): put the file at {cached} (set TORCH_HOME to move the cache) "
            f"or pass --weights FILE"
        ) from exc
