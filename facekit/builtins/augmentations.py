"""Built-in training augmentations: rotate, flip, crop, color, erase.

Each step works on float32 NCHW images in grey levels (0-255) in torch and on uint8 HWC nodes
in DALI, with the same per-image draws; see :class:`facekit.api.AugmentationSpec`. Geometric
steps sample bilinearly with pixel centres at half-integer coordinates, the convention of both
``torch.nn.functional.grid_sample(align_corners=False)`` and DALI's resampling operators.
"""

from __future__ import annotations

import math

import numpy as np

from facekit import hookimpl
from facekit.api import AugmentationSpec
from facekit.errors import UsageError

# ITU-R BT.601 luma weights: the grey that DALI's color_twist desaturates towards.
LUMA = (0.299, 0.587, 0.114)
MID_GREY = 128.0  # DALI's color_twist scales contrast about half the uint8 range


def _numbers(name: str, arg: str | None, defaults: tuple[float, ...]) -> tuple[float, ...]:
    """Comma-separated floats after ``name:``; missing trailing values take their defaults."""
    if arg is None or arg == "":
        return defaults
    try:
        values = tuple(float(part) for part in arg.split(","))
    except ValueError:
        values = ()
    if not 1 <= len(values) <= len(defaults) or not all(math.isfinite(v) for v in values):
        raise UsageError(f"--augment {name}:{arg}: expected {_usage(name)}")
    return values + defaults[len(values) :]


def _fail(name: str, arg: str | None, why: str):
    raise UsageError(f"--augment {name}:{arg}: {why}")


def _usage(name: str) -> str:
    return {
        "rotate": "rotate:DEGREES (a number >= 0)",
        "flip": "flip:PROBABILITY (0 to 1)",
        "crop": "crop:SCALE_MIN[,RATIO_MIN,RATIO_MAX] (0 < SCALE_MIN <= 1, 0 < RATIO_MIN <= RATIO_MAX)",
        "color": "color:BRIGHTNESS[,CONTRAST,SATURATION] (numbers from 0 to 1)",
        "erase": "erase:PROBABILITY (0 to 1)",
    }[name]


def _per_image(samples, column: int):
    """Column ``column`` of the (n, k) draws, shaped (n, 1, 1, 1) to broadcast over NCHW."""
    return samples[:, column].view(-1, 1, 1, 1)


def _box(rng: np.random.Generator, n: int, area: tuple[float, float], log_ratio: tuple[float, float]) -> np.ndarray:
    """Random boxes as fractions of the image (top, left, height, width), from 4 uniforms per image.

    Area fraction and log aspect ratio (width / height) are uniform; a side longer than the
    image is cut to the image (no retries, so the draws stay a fixed count per image).
    """
    u = rng.random((n, 4))
    fraction = area[0] + (area[1] - area[0]) * u[:, 0]
    ratio = np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[:, 1])
    height = np.minimum(np.sqrt(fraction / ratio), 1.0)
    width = np.minimum(np.sqrt(fraction * ratio), 1.0)
    top, left = (1.0 - height) * u[:, 2], (1.0 - width) * u[:, 3]
    return np.stack([top, left, height, width], axis=1)


def _resample(images, theta, padding: str):
    """Bilinear sampling of each image through its own affine map (output -> input, normalized)."""
    import torch.nn.functional as F

    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


# --- rotate ---------------------------------------------------------------------------------


def parse_rotate(arg: str | None) -> float:
    (degrees,) = _numbers("rotate", arg, (15.0,))
    if not 0 <= degrees <= 180:
        _fail("rotate", arg, "the angle is a bound in degrees, from 0 to 180 (0: no rotation)")
    return degrees


def sample_rotate(rng: np.random.Generator, n: int, degrees: float) -> np.ndarray:
    # Exactly the draw the loaders made before augmentations were plugins: resumed runs reproduce.
    if degrees <= 0:
        return np.zeros((n, 1), np.float32)
    return rng.uniform(-degrees, degrees, (n, 1)).astype(np.float32)


def rotate_torch(images, samples, degrees: float):
    import torch

    n, _, h, w = images.shape
    radians = samples[:, 0] * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # Output pixel p samples the input at R(-angle) p about the centre (in pixels, so non-square
    # images rotate without shearing); on screen (y down) the picture turns counter-clockwise.
    theta = torch.stack([torch.stack([cos, -sin * (h / w), zero], 1), torch.stack([sin * (w / h), cos, zero], 1)], 1)
    return _resample(images, theta, "zeros")


def rotate_dali(images, samples, degrees: float):
    from nvidia.dali import fn, types

    return fn.rotate(images, angle=samples[0], fill_value=0, keep_size=True, interp_type=types.INTERP_LINEAR)


# --- flip -----------------------------------------------------------------------------------


def parse_flip(arg: str | None) -> float:
    (probability,) = _numbers("flip", arg, (0.5,))
    if not 0 <= probability <= 1:
        _fail("flip", arg, "the probability is from 0 to 1")
    return probability


def sample_flip(rng: np.random.Generator, n: int, probability: float) -> np.ndarray:
    return (rng.random((n, 1)) < probability).astype(np.float32)


def flip_torch(images, samples, probability: float):
    import torch

    chosen = samples[:, 0] > 0.5
    if images.is_cuda:  # nonzero() would make the host wait for the GPU every batch
        return torch.where(chosen.view(-1, 1, 1, 1), images.flip(-1), images)
    index = chosen.nonzero().view(-1)
    images[index] = images[index].flip(-1)  # on the CPU only the chosen images move: half the traffic
    return images


def flip_dali(images, samples, probability: float):
    from nvidia.dali import fn, types

    return fn.flip(images, horizontal=fn.cast(samples[0], dtype=types.INT32), vertical=0)


# --- crop -----------------------------------------------------------------------------------


def parse_crop(arg: str | None) -> tuple[float, float, float]:
    scale_min, ratio_min, ratio_max = _numbers("crop", arg, (0.5, 3 / 4, 4 / 3))
    if not (0 < scale_min <= 1 and 0 < ratio_min <= ratio_max):
        _fail("crop", arg, f"expected {_usage('crop')}")
    return scale_min, ratio_min, ratio_max


def sample_crop(rng: np.random.Generator, n: int, params: tuple[float, float, float]) -> np.ndarray:
    scale_min, ratio_min, ratio_max = params
    return _box(rng, n, (scale_min, 1.0), (math.log(ratio_min), math.log(ratio_max))).astype(np.float32)


def crop_torch(images, samples, params):
    import torch

    top, left, height, width = samples.unbind(1)
    zero = torch.zeros_like(top)
    # Normalized output x in [-1, 1] maps to the box's span [2 left - 1, 2 (left + width) - 1].
    theta = torch.stack(
        [torch.stack([width, zero, 2 * left + width - 1], 1), torch.stack([zero, height, 2 * top + height - 1], 1)], 1
    )
    return _resample(images, theta, "border")


def crop_dali(images, samples, params):
    from nvidia.dali import fn, types

    size = images.shape(dtype=types.FLOAT)[0:2]  # a CPU node, also for GPU images
    return fn.resize(
        images,
        size=size,
        roi_start=samples[0:2],
        roi_end=samples[0:2] + samples[2:4],
        roi_relative=True,
        interp_type=types.INTERP_LINEAR,
        antialias=False,  # the box is never larger than the output: only upsampling
    )


# --- color ----------------------------------------------------------------------------------


def parse_color(arg: str | None) -> tuple[float, float, float]:
    values = _numbers("color", arg, (0.4, 0.4, 0.4))
    if arg and "," not in arg:  # one number jitters all three
        values = (values[0],) * 3
    if not all(0 <= v <= 1 for v in values):
        _fail("color", arg, f"expected {_usage('color')}")
    return values


def sample_color(rng: np.random.Generator, n: int, params: tuple[float, float, float]) -> np.ndarray:
    spread = np.asarray(params)
    return (1.0 + spread * rng.uniform(-1.0, 1.0, (n, 3))).astype(np.float32)


def color_torch(images, samples, params):
    import torch

    brightness, contrast, saturation = (_per_image(samples, c) for c in range(3))
    # DALI's color_twist as one affine colour map: desaturate towards luma, scale contrast
    # about mid-grey, then scale brightness; uint8 output saturates, hence the clamp.
    #   out = b (c (s x + (1 - s) grey) + (1 - c) MID_GREY) = gain x + (grey_gain grey + offset)
    # computed as one pass over the batch plus a grey plane a third its size.
    grey = images[:, 0:1] * LUMA[0] + images[:, 1:2] * LUMA[1] + images[:, 2:3] * LUMA[2]
    gain = brightness * contrast * saturation
    base = grey.mul_(brightness * contrast * (1 - saturation)).add_(brightness * (1 - contrast) * MID_GREY)
    return torch.addcmul(base, images, gain, out=images).clamp_(0.0, 255.0)


def color_dali(images, samples, params):
    from nvidia.dali import fn

    return fn.color_twist(images, brightness=samples[0], contrast=samples[1], saturation=samples[2])


# --- erase ----------------------------------------------------------------------------------

ERASE_AREA = (0.02, 0.33)  # torchvision RandomErasing's defaults
ERASE_RATIO = (0.3, 3.3)


def parse_erase(arg: str | None) -> float:
    (probability,) = _numbers("erase", arg, (0.5,))
    if not 0 <= probability <= 1:
        _fail("erase", arg, "the probability is from 0 to 1")
    return probability


def sample_erase(rng: np.random.Generator, n: int, probability: float) -> np.ndarray:
    chosen = rng.random((n, 1)) < probability
    box = _box(rng, n, ERASE_AREA, (math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])))
    return np.concatenate([chosen, box], axis=1).astype(np.float32)


def erase_torch(images, samples, probability: float):
    import torch

    n, _, h, w = images.shape
    chosen, top, left, height, width = (samples[:, c].view(n, 1) for c in range(5))
    # Rows floor(top * h) <= i < floor((top + height) * h) are erased, as DALI's fn.erase rounds
    # a normalized box; for integers i that is top < (i + 1) / h <= top + height.
    ends_y = (torch.arange(h, device=images.device, dtype=torch.float32) + 1) / h
    ends_x = (torch.arange(w, device=images.device, dtype=torch.float32) + 1) / w
    rows = (ends_y > top) & (ends_y <= top + height)
    cols = (ends_x > left) & (ends_x <= left + width)
    inside = (rows[:, :, None] & cols[:, None, :]) & (chosen > 0.5)[:, :, None]
    return images.masked_fill(inside[:, None], 0.0)


def erase_dali(images, samples, probability: float):
    from nvidia.dali import fn

    return fn.erase(
        images,
        anchor=samples[1:3],
        shape=samples[3:5] * samples[0],  # a zero-sized box when not chosen
        axis_names="HW",
        normalized_anchor=True,
        normalized_shape=True,
        fill_value=0,
    )


@hookimpl
def register_augmentations(register):
    register(
        AugmentationSpec(
            "rotate", parse_rotate, sample_rotate, rotate_torch,
            "rotate:DEG - rotate by a uniform angle in [-DEG, DEG] (default 15) about the centre, black fill.",
            rotate_dali, geometric=True,
        )
    )
    register(
        AugmentationSpec(
            "flip", parse_flip, sample_flip, flip_torch,
            "flip[:P] - mirror left-right with probability P (default 0.5).",
            flip_dali, geometric=True,
        )
    )
    register(
        AugmentationSpec(
            "crop", parse_crop, sample_crop, crop_torch,
            "crop:SCALE_MIN[,RATIO_MIN,RATIO_MAX] - random-resized crop: a box of area SCALE_MIN..1 of the image "
            "and aspect RATIO_MIN..RATIO_MAX (default 0.5, 3/4, 4/3), stretched back to the input size.",
            crop_dali, geometric=True,
        )
    )
    register(
        AugmentationSpec(
            "color", parse_color, sample_color, color_torch,
            "color:B[,C,S] - brightness, contrast (about mid-grey) and saturation factors uniform in "
            "[1 - x, 1 + x] (default 0.4 each; one number sets all three).",
            color_dali,
        )
    )
    register(
        AugmentationSpec(
            "erase", parse_erase, sample_erase, erase_torch,
            "erase[:P] - with probability P (default 0.5) blacken a random box of 2-33% of the image, "
            "aspect 0.3-3.3 (random erasing with black fill).",
            erase_dali,
        )
    )
