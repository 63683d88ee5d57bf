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

from facekit.errors import FacekitError, UsageError

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
        # A file named on the command line is the user's input to fix (exit 2); a cached or
        # packaged one is not.
        error = UsageError if option and option.startswith("--") else FacekitError
        raise error(f"{what}: no such file" + ("" if path.exists() else "; check the path"))
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


# PyTorch's unpickling errors tell the user to load the file with weights_only=False, which runs
# whatever code the file holds. facekit never gives that advice: it words the failure itself.
_TORCH_ADVICE = re.compile(r"weights_only|safe_globals|trusted source|trust the source|arbitrary code", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def scrub_torch_advice(text: str) -> str:
    """``text`` without PyTorch's advice to unpickle untrusted data (one line when it had any)."""
    if not _TORCH_ADVICE.search(text):
        return text
    text = _ANSI.sub("", text)
    start = text.find("Weights only load failed")
    if start >= 0:
        reason = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\n\s*\n|$)", text[start:], re.DOTALL)
        detail = " ".join(reason.group(1).split()) if reason else ""
        unsupported = re.search(r"GLOBAL ([\w.]+)", detail)
        if unsupported:
            detail = f"it holds a pickled {unsupported.group(1)} object, not only tensors"
        elif detail:
            detail = f"not tensors in PyTorch's format ({detail})"
        else:
            detail = "not tensors in PyTorch's format"
        return " ".join(text[:start].split() + [detail + "; facekit loads weights only and never runs pickled code"])
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return " ".join(s for s in sentences if not _TORCH_ADVICE.search(s)) or "the file could not be read"


def describe_load_failure(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one line without PyTorch's advice."""
    text = str(exc)
    if "PytorchStreamReader" in text or "central directory" in text:
        return "not a complete PyTorch file (truncated or damaged)"
    if isinstance(exc, EOFError) or "Ran out of input" in text:
        return "the file is empty or truncated"
    scrubbed = scrub_torch_advice(text)
    first = scrubbed.splitlines()[0].strip() if scrubbed.strip() else ""
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


def load_weights_file(path: Path, what: str, fix: str, error: type[FacekitError] = FacekitError) -> dict:
    """``torch.load(path, weights_only=True)``, or one line naming ``what`` (the file as the user knows it) and ``fix``."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        raise error(f"{what}: cannot be read as weights ({describe_load_failure(exc)}); {fix}") from exc


def load_torchvision_weights(weights_enum, explicit: Path | None, *, trust: bool, model=None) -> dict:
    """A torchvision weights entry's state dict: ``explicit`` file, else the TORCH_HOME cache, else a download.

    With ``model``, the weights are also loaded into it; weights that do not fit it name their file.
    """
    import torch

    url = weights_enum.url
    published = Path(url).name
    if explicit is not None:
        verify_sha256(Path(explicit), published_hash_prefix(url), trust=trust, published=published)
        what, fix, error = f"--weights {explicit}", f"give the {published} file or a state dict of the same network", UsageError
        state = load_weights_file(Path(explicit), what, fix, error)
        return _load_into(model, state, what, fix, error)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / published
    if cached.is_file():
        verify_sha256(cached, published_hash_prefix(url), trust=trust, published=published)
        what, fix = f"cached pretrained weights {cached}", "delete the file to download it again, or pass --weights FILE"
        return _load_into(model, load_weights_file(cached, what, fix), what, fix, FacekitError)
    try:  # torchvision's weights API: downloads into the same cache, checking the hash
        return _load_into(model, weights_enum.get_state_dict(progress=True, check_hash=True), f"pretrained weights {published}", "", FacekitError)
    except FacekitError:
        raise
    except Exception as exc:  # offline: URLError, socket errors, ...
        raise FacekitError(
            f"pretrained weights {published} are not in the cache and could not be downloaded "
            f"({exc.__class__.__name__}): put the file at {cached} (set TORCH_HOME to move the cache) "
            f"or pass --weights FILE"
        ) from exc


def _load_into(model, state: dict, what: str, fix: str, error: type[FacekitError]) -> dict:
    """Load ``state`` into ``model`` (when given); weights of another network name ``what``."""
    if model is None:
        return state
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:  # missing or unexpected keys, shapes, not a dict
        first = " ".join(str(exc).split())[:300]
        raise error(f"{what}: not weights of this network ({exc.__class__.__name__}: {first})" + (f"; {fix}" if fix else "")) from exc
    return state
