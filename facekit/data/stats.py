"""Normalization statistics: decode once, then mean/std over any subset (e.g. each fold's training part)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facekit.api import Normalization
from facekit.errors import FacekitError


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
