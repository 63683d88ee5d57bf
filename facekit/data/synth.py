"""A synthetic face data set: quick to make, learnable, and shaped like the real thing.

Each identity has its own drawn "face": skin and background colours, face shape, eye spacing
and size, mouth width and curve, and a few identity-specific marks. Each image of it varies in
pose (rotation, shift), scale, lighting and noise, so a classifier must learn the identity,
not the picture.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from facekit.errors import UsageError
from facekit.files import describe_contents, protected_reason

FORMATS = ("png", "jpg", "bmp", "ppm")
# What this module writes, and all --force replaces: person_N/NNN.<format> files, nothing else.
_IDENTITY = re.compile(r"^person_\d+$")
_SHOT = re.compile(rf"^\d{{3}}\.({'|'.join(FORMATS)})$")


def make_synthetic_dataset(
    out: str | Path,
    identities: int = 5,
    per_identity: int = 8,
    size: int = 64,
    seed: int = 0,
    fmt: str = "png",
    *,
    force: bool = False,
) -> Path:
    """Write ``identities`` folders ``person_00 ...`` of ``per_identity`` images each; returns ``out``."""
    from PIL import Image

    if identities < 1 or per_identity < 1:
        raise UsageError("--identities and --per-identity must be at least 1")
    if size < 16:
        raise UsageError(f"--size {size}: use at least 16 pixels")
    if fmt not in FORMATS:
        raise UsageError(f"image format {fmt!r} is not supported; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        replaceable = is_synthetic_dataset(out) and protected_reason(out) is None
        if not force:
            hint = " or pass --force to replace it" if replaceable else ""
            raise UsageError(f"{out} is not empty; choose an empty folder{hint}")
        if not replaceable:
            reason = protected_reason(out) or f"{out} is not a data set made by `facekit data synth` (it holds {describe_contents(out)})"
            raise UsageError(f"--force: {reason}; --force replaces only such a set, so nothing was deleted: choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    width = max(2, len(str(identities - 1)))
    for person in range(identities):
        face = _draw_identity(rng)
        folder = out / f"person_{person:0{width}d}"
        folder.mkdir()
        for shot in range(per_identity):
            image = _photograph(face, rng, size)
            Image.fromarray(image).save(folder / f"{shot:03d}.{fmt}", **({"quality": 92} if fmt == "jpg" else {}))
    return out


_CANVAS = 128  # faces are drawn at this size, then posed and shrunk (which also antialiases)


def _draw_identity(rng: np.random.Generator):
    """The identity's neutral portrait as a PIL image on its own background."""
    from PIL import Image, ImageDraw

    c = _CANVAS
    background = tuple(int(v) for v in rng.integers(30, 226, 3))
    skin = tuple(int(v) for v in rng.integers(60, 256, 3))
    features = tuple(int(v) for v in rng.integers(0, 120, 3))
    image = Image.new("RGB", (c, c), background)
    draw = ImageDraw.Draw(image)

    half_w, half_h = rng.uniform(0.26, 0.40) * c, rng.uniform(0.32, 0.44) * c
    draw.ellipse([c / 2 - half_w, c / 2 - half_h, c / 2 + half_w, c / 2 + half_h], fill=skin)
    for _ in range(3):  # identity-specific marks (hair, scars, glasses...), on or off the face
        x, y, r = rng.uniform(0.15, 0.85) * c, rng.uniform(0.1, 0.9) * c, rng.uniform(0.04, 0.1) * c
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))

    eye_y = c / 2 - rng.uniform(0.05, 0.15) * c
    spacing, eye_r = rng.uniform(0.10, 0.22) * c, rng.uniform(0.03, 0.07) * c
    for x in (c / 2 - spacing, c / 2 + spacing):
        draw.ellipse([x - eye_r, eye_y - eye_r, x + eye_r, eye_y + eye_r], fill=features)

    mouth_y, mouth_w = c / 2 + rng.uniform(0.12, 0.25) * c, rng.uniform(0.08, 0.25) * c
    curve = rng.uniform(-0.08, 0.08) * c  # smile (> 0) or frown (< 0)
    box = [c / 2 - mouth_w, mouth_y - abs(curve), c / 2 + mouth_w, mouth_y + abs(curve) + 1]
    draw.arc(box, 0 if curve >= 0 else 180, 180 if curve >= 0 else 360, fill=features, width=max(2, c // 40))
    return image


def _photograph(face, rng: np.random.Generator, size: int) -> np.ndarray:
    """One posed, lit, noisy shot of ``face`` as a uint8 (size, size, 3) array."""
    from PIL import Image

    c = _CANVAS
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(1.0, 1.25)  # zoom: the face fills more or less of the shot
    shift = rng.uniform(-0.06, 0.06, 2) * c
    posed = face.rotate(angle, resample=Image.BILINEAR, translate=tuple(shift), fillcolor=face.getpixel((0, 0)))
    crop = c / scale
    left, top = (c - crop) / 2, (c - crop) / 2
    posed = posed.resize((size, size), Image.BILINEAR, box=(left, top, left + crop, top + crop))
    pixels = np.asarray(posed, dtype=np.float32)
    gain = rng.uniform(0.7, 1.25) * rng.uniform(0.9, 1.1, 3)  # brightness and colour cast
    gradient = np.linspace(-1, 1, size, dtype=np.float32)[None, :, None] * rng.uniform(-25, 25)  # side light
    noise = rng.normal(0, 6, pixels.shape).astype(np.float32)
    return np.clip(pixels * gain + gradient + noise, 0, 255).astype(np.uint8)


def is_synthetic_dataset(folder: Path) -> bool:
    """``folder`` looks exactly as :func:`make_synthetic_dataset` leaves it: nothing but
    ``person_N/NNN.<format>`` files (so a set someone added their own images to is not replaced)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    for identity in folder.iterdir():
        if not (_IDENTITY.match(identity.name) and identity.is_dir() and not identity.is_symlink()):
            return False
        if not all(_SHOT.match(shot.name) and shot.is_file() and not shot.is_symlink() for shot in identity.iterdir()):
            return False
    return True
