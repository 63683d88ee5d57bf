"""Pretrained weights files: hashing, verification, and torchvision's weights API offline.

Plugins check their files with :func:`verify_sha256` too (through ``facekit.api``), so every
architecture refuses a tampered file the same way. Importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

from facekit.errors import FacekitError

TRUST_HINT = "pass --trust-weights to use a file of your own"


def file_sha256(path: Path) -> str:
    """The hex sha256 of ``path`` (cached per path, size and modification time: weights files are big)."""
    status = os.stat(path)
    return _sha256(str(Path(path).resolve()), status.st_size, status.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(
    path: Path,
    expected: str,
    *,
    trust: bool,
    published: str | None = None,
    option: str | None = "--weights",
    fix: str = TRUST_HINT,
) -> Path:
    """Return ``path`` if its sha256 starts with ``expected``, or if the user vouches for it (``trust``).

    ``expected`` is a full hex digest or torch.hub's prefix of one. Otherwise raise a one-line
    :class:`FacekitError` naming the file as ``"{option} {path}"`` (just the path when ``option``
    is None), the ``published`` file it should have been (default: its own name) and ``fix``.
    A missing file is refused even when trusted.
    """
    path = Path(path)
    what = f"{option} {path}" if option else str(path)
    if not path.is_file():
        raise FacekitError(f"{what}: no such file")
    if trust:
        return path
    actual = file_sha256(path)
    if not actual.startswith(expected.lower()):
        raise FacekitError(
            f"{what}: sha256 {actual[:16]}... does not match the published {published or path.name} "
            f"(sha256 {expected[:16]}...); {fix}"
        )
    return path


def published_hash_prefix(url: str) -> str:
    """torch.hub's convention: ``name-<first hex digits of the sha256>.pth``."""
    match = re.search(r"-([a-f0-9]+)\.", Path(url).name)
    if not match:
        raise ValueError(f"no hash in weights file name {url}")
    return match.group(1)


def load_torchvision_weights(weights_enum, explicit: Path | None, *, trust: bool) -> dict:
    """A torchvision weights entry's state dict: ``explicit`` file, else the TORCH_HOME cache, else a download."""
    import torch

    url = weights_enum.url
    published = Path(url).name
    if explicit is not None:
        verify_sha256(Path(explicit), published_hash_prefix(url), trust=trust, published=published)
        return torch.load(explicit, map_location="cpu", weights_only=True)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / published
    if cached.is_file():
        verify_sha256(cached, published_hash_prefix(url), trust=trust, published=published)
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:  # torchvision's weights API: downloads into the same cache, checking the hash
        return weights_enum.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # offline: URLError, socket errors, ...
        raise FacekitError(
            f"pretrained weights {published} are not in the cache and could not be downloaded "
            f"({exc.__class__.__name__}): put the file at {cached} (set TORCH_HOME to move the cache) "
            f"or pass --weights FILE"
        ) from exc
