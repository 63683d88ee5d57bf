"""Normalization statistics: decode once, then mean/std over any subset (e.g. each fold's training part).

The per-image sums are cached in ``$FACEKIT_CACHE_DIR/stats`` with a sha256 beside them; a cache
entry that fails its checksum or holds sums no image could produce is recomputed, and a cache
folder that cannot be written costs a warning, never the training.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from facekit.specs import ArchitectureSpec, Normalization, SplitPlan
from facekit.errors import FacekitError
from facekit.files import atomic_write, remove_stale_temporaries

# How images are decoded (facekit.data.pixels); part of the cache key, so sums computed by an
# older decoder (16-bit images clipped, EXIF orientation ignored) are never reused.
_DECODING = "rgb8-v2"
# Temporaries older than this were left by a killed writer.
STALE_TEMPORARY_S = 3600.0
# Slack for float rounding in the plausibility checks (sums of up to 224*224 values in [0, 1]).
_TOLERANCE = 1e-6


class Messages(Protocol):
    def message(self, text: str) -> None: ...


def cached_channel_sums(paths: Sequence[str], input_size: int, progress: Messages) -> np.ndarray:
    """:func:`channel_sums` of ``paths``, decoded once per data set and input size and kept in the user cache.

    The key covers every file's path, size and modification time, so any change recomputes.
    """
    from facekit.data.index import cache_dir

    key = hashlib.sha256(f"{_DECODING}\0{input_size}".encode())
    for path in paths:
        stat = os.stat(path)
        key.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    cache = cache_dir() / "stats" / f"{key.hexdigest()[:32]}.npy"
    cached = _read_sums(cache, len(paths), input_size * input_size)
    if cached is not None:
        return cached
    progress.message(f"computing normalization statistics over {len(paths)} images")
    sums = channel_sums(paths, input_size)
    _write_sums(cache, sums)
    return sums


def _digest_file(cache: Path) -> Path:
    return cache.with_name(cache.name + ".sha256")


def _read_sums(cache: Path, count: int, pixels_per_image: int) -> np.ndarray | None:
    """The sums cached at ``cache`` when their checksum holds and they are plausible, else None."""
    try:
        data = cache.read_bytes()
        if _digest_file(cache).read_text().strip() != hashlib.sha256(data).hexdigest():
            return None
        sums = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # missing, unreadable or damaged: recomputed by the caller
    return sums if plausible_sums(sums, count, pixels_per_image) else None


def plausible_sums(sums: np.ndarray, count: int, pixels_per_image: int) -> bool:
    """``sums`` could be :func:`channel_sums` of ``count`` images of ``pixels_per_image`` pixels.

    Pixels lie in [0, 1], so per image and channel: 0 <= sum <= n, sum of squares <= sum, and
    sum of squares >= sum**2 / n (the variance is not negative).
    """
    if sums.shape != (count, 3, 2) or sums.dtype != np.float64 or not np.isfinite(sums).all():
        return False
    total, squares = sums[..., 0], sums[..., 1]
    slack = _TOLERANCE * pixels_per_image
    return bool(
        (total >= 0).all()
        and (total <= pixels_per_image + slack).all()
        and (squares <= total + slack).all()
        and (squares >= total**2 / pixels_per_image - slack).all()
    )


def _write_sums(cache: Path, sums: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, sums, allow_pickle=False)
    data = buffer.getvalue()
    try:
        remove_stale_temporaries(cache.parent, older_than_s=STALE_TEMPORARY_S)
        atomic_write(cache, data)
        atomic_write(_digest_file(cache), f"{hashlib.sha256(data).hexdigest()}\n".encode())
    except OSError as err:
        warnings.warn(
            f"cannot write the statistics cache in {cache.parent} ({err.strerror or err}); going on without it",
            RuntimeWarning,
            stacklevel=3,
        )


def channel_sums(
    files: Sequence[str | Path], input_size: int, *, progress: Callable[[int], None] | None = None
) -> np.ndarray:
    """(N, 3, 2): per image and channel, the sum and the sum of squares of pixel / 255.

    Images are decoded and resized exactly as the torch loader does (plain resize to
    input_size x input_size), before any rotation.
    """
    from facekit.data.loaders._common import decode_resized

    def one(path: str | Path) -> np.ndarray:
        try:
            pixels = decode_resized(path, input_size).double().div_(255.0).flatten(1).numpy()
        except Exception as err:  # noqa: BLE001 - name the file, whatever the decoder raised
            raise FacekitError(f"{path}: cannot decode ({err}); run `facekit data check` on the data set") from err
        return np.stack([pixels.sum(axis=1), (pixels * pixels).sum(axis=1)], axis=1)

    sums = np.zeros((len(files), 3, 2), dtype=np.float64)
    # torchvision's decoders and resize release the GIL: threads keep both cores busy.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for i, result in enumerate(pool.map(one, files)):
            sums[i] = result
            if progress is not None:
                progress(1)
    return sums


def normalization_from_sums(sums: np.ndarray, indices: Sequence[int] | np.ndarray, pixels_per_image: int) -> Normalization:
    """Per-channel mean and (population) std over exactly the images at ``indices``."""
    chosen = np.asarray(sums)[np.asarray(indices, dtype=np.int64)]
    if len(chosen) == 0:
        raise FacekitError("cannot compute normalization statistics: the training split is empty")
    count = len(chosen) * pixels_per_image
    mean = chosen[:, :, 0].sum(axis=0) / count
    variance = np.maximum(chosen[:, :, 1].sum(axis=0) / count - mean**2, 0.0)
    # A constant channel (a blank data set) must not divide by zero later.
    std = np.maximum(np.sqrt(variance), 1e-6)
    return Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def run_normalizations(
    arch: ArchitectureSpec, paths: Sequence[str], plan: SplitPlan, input_size: int, progress: Messages
) -> dict[str, Any]:
    """normalization.json's content: the architecture's own statistics, or each fold's training split's."""
    if arch.normalization is not None:
        norm = arch.normalization.to_dict()
        return {"source": f"architecture {arch.name}", "folds": [norm for _ in plan.folds]}
    sums = cached_channel_sums(paths, input_size, progress)
    pixels = input_size * input_size
    folds = [normalization_from_sums(sums, fold.train, pixels).to_dict() for fold in plan.folds]
    return {"source": "training split", "folds": folds}
