"""Decode and resize images without torch, to the same pixels as the torch loader.

An exported bundle predicts with numpy, Pillow and onnxruntime alone, yet must see exactly the
pixels the run's model saw: the torch loader decodes with torchvision (JPEG and PNG) or Pillow
(the rest) and resizes with torchvision's antialiased bilinear resize, which on uint8 images
(x86 with AVX2, and ARM) is Pillow's resampling algorithm with 16-bit fixed-point weights.
Pillow's own ``Image.resize`` keeps 22-bit weights, so about one pixel in a thousand differs by
one grey level; :func:`resize_square` reproduces the 16-bit arithmetic instead, pixel for pixel
(tests/test_imaging.py compares the two on real and synthetic faces).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3); grey and palette images become RGB, alpha is dropped."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, C) to (size, size, C): plain (aspect-changing) antialiased bilinear resize."""
    height, width = image.shape[:2]
    out = image
    if width != size:  # horizontal pass first, as torchvision and Pillow do
        out = _resample(out, size, axis=1)
    if height != size:
        out = _resample(out, size, axis=0)
    return np.ascontiguousarray(out)


def load_resized(path: str | Path, size: int) -> np.ndarray:
    return resize_square(read_rgb(path), size)


def _weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per output pixel: the first input pixel, the int16 weights of its taps, and their precision in bits."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # bilinear: half-width 1, widened by the scale when shrinking
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = int(math.ceil(support)) * 2 + 1
    centers = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)  # C's cast: truncation toward zero
    count = np.clip(np.minimum((centers + support + 0.5).astype(np.int64), in_size) - first, 0, taps)
    weights = np.zeros((out_size, taps), dtype=np.float64)
    total = np.zeros(out_size, dtype=np.float64)
    for tap in range(taps):  # summed tap by tap, in the reference's order, so the doubles agree bit for bit
        x = (((tap + first) - centers) + 0.5) * invscale
        w = np.where(np.abs(x) < 1.0, 1.0 - np.abs(x), 0.0)
        w = np.where(tap < count, w, 0.0)
        weights[:, tap] = w
        total += w
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0.0)
    largest = float(weights.max()) if weights.size else 0.0
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    fixed = np.floor(0.5 + weights * (1 << precision)).astype(np.int64)  # weights are >= 0: round half up
    return first, fixed, precision


def _resample(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    in_size = image.shape[axis]
    first, fixed, precision = _weights(in_size, out_size)
    taps = fixed.shape[1]
    index = np.minimum(first[:, None] + np.arange(taps)[None, :], in_size - 1)  # taps past the edge weigh 0
    pixels = np.take(image.astype(np.int64), index, axis=axis)  # axis becomes (out_size, taps)
    shape = [1] * pixels.ndim
    shape[axis], shape[axis + 1] = out_size, taps
    acc = (pixels * fixed.reshape(shape)).sum(axis=axis + 1) + (1 << (precision - 1) if precision else 0)
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)
