"""One meaning for an image file's pixels: 8-bit RGB, upright, whatever the file's mode.

Every decoder in facekit agrees on it: the torch loader, the statistics and ``predict`` (through
:func:`facekit.data.loaders._common.read_rgb`), the index's duplicate check, and DALI, whose
decoder already reads files this way:

- 16-bit images (PNG, PGM/PPM with maxval 65535) are scaled to 8 bits (``round(v / 257)``,
  DALI's rounding), never clipped: PIL alone turns a 16-bit grey PNG into mostly white.
- The EXIF orientation of JPEG and PNG files is applied, as image viewers and DALI do.
- Palette, grey, grey + alpha, RGBA, CMYK and 1-bit images become RGB; alpha is dropped
  (the colour channels are kept as stored), as torchvision and DALI do.
"""

from __future__ import annotations

import numpy as np

# Modes PIL gives 16- (or 32-) bit grey images; their values span 0..65535.
WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# The file formats facekit reads, by extension: anything else in a file is refused by name.
FORMAT_OF_SUFFIX = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".pgm": "PPM", ".ppm": "PPM", ".bmp": "BMP"}
READABLE_FORMATS = frozenset(FORMAT_OF_SUFFIX.values())


def rgb8(image) -> np.ndarray:
    """A PIL image's pixels as upright 8-bit RGB, ``(H, W, 3)`` uint8 (see the module's rules)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image
    if image.mode in WIDE_GREY_MODES:
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        grey = ((wide + 128) // 257).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def wide_to_8bit(values):
    """16-bit samples (a torch or numpy integer array) to 8 bits with DALI's rounding, ``round(v / 257)``."""
    return (values + 128) // 257
