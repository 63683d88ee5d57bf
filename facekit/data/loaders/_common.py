"""What every loader backend shares: the epoch plan, decoding for torch, batched rotate + normalize."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facekit.specs import Normalization
from facekit.data.augment import AugmentPipeline
from facekit.data.loaders import _native
from facekit.data.pixels import rgb8, wide_to_8bit

# torchvision 0.29 warns on every decode that its decoders move to TorchCodec; they still work,
# and the warning would repeat once per image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)

# Formats torchvision.io decodes itself; others (PGM/PPM, BMP) go through PIL.
_TORCHVISION_SUFFIXES = {".jpg", ".jpeg", ".png"}


def read_rgb(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W), as :mod:`facekit.data.pixels` defines it.

    Grey, palette, alpha and CMYK images become RGB, 16-bit ones are scaled to 8 bits and the
    EXIF orientation is applied: the same pixels DALI's decoder gives.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    if Path(path).suffix.lower() in _TORCHVISION_SUFFIXES:
        try:
            # Also where a caller turned warnings into errors: the deprecation notice must not make
            # a good image count as undecodable (the loaders skip what raises).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError:
            pass  # a file torchvision does not decode: PIL below decodes it or says why not
        else:
            if image.dtype != torch.uint8:  # a 16-bit PNG comes as uint16: scaled, never clipped
                image = wide_to_8bit(image.to(torch.int32)).to(torch.uint8)
            return image
    from PIL import Image

    with Image.open(path) as image:
        array = rgb8(image)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Plain (aspect-changing) bilinear resize with antialiasing, uint8 in and out."""
    from torchvision.transforms.v2 import functional as TF

    if image.shape[-2:] == (size, size):
        return image
    return TF.resize(image, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def decode_resized(path: str | Path, size: int) -> torch.Tensor:
    return resize_square(read_rgb(path), size)


@dataclass(frozen=True)
class EpochPlan:
    """Which samples this shard reads in one epoch, in order, and each one's augmentation draws."""

    indices: np.ndarray  # int64 positions into the loader's file list
    samples: tuple[np.ndarray, ...]  # per augmentation step: float32 (len(indices), k); () for evaluation

    def batches(self, batch_size: int):
        """(positions, per-step draws) of each batch, in order."""
        for start in range(0, len(self.indices), batch_size):
            stop = start + batch_size
            yield self.indices[start:stop], tuple(drawn[start:stop] for drawn in self.samples)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without making the host wait for the device's queue."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


# What a backend's ``_raw_batches`` yields: uint8 NCHW images on the device, their int64 positions,
# and their per-step draws (None when the backend already augmented them).
RawBatch = tuple[torch.Tensor, torch.Tensor, "tuple[np.ndarray, ...] | None"]


def plan_epoch(
    num_files: int, *, epoch: int, seed: int, train: bool, augment: AugmentPipeline, shard_id: int, num_shards: int
) -> EpochPlan:
    """The order and draws of one epoch: a function of (seed, epoch) only, like DistributedSampler.

    Training shards are padded by wrapping around so every shard has the same number of samples
    (data-parallel ranks stay in step); evaluation shards are not padded, so across shards every
    image is seen exactly once, and never augmented.
    """
    if train:
        draws = augment.sample(seed, epoch, num_files)
        per_shard = math.ceil(num_files / num_shards) if num_files else 0
        padded = np.resize(np.arange(num_files), per_shard * num_shards)  # wraps around
        chosen = padded[shard_id::num_shards]
        return EpochPlan(draws.order[chosen].astype(np.int64), draws.take(chosen))
    indices = np.arange(num_files, dtype=np.int64)[shard_id::num_shards]
    return EpochPlan(indices, ())


def shard_size(num_files: int, *, train: bool, shard_id: int, num_shards: int) -> int:
    if train:
        return math.ceil(num_files / num_shards) if num_files else 0
    return len(range(shard_id, num_files, num_shards))


class RotateNormalize:
    """Batched augmentation on uint8 NCHW images: rotate each by its own angle, then normalize.

    Rotation is bilinear about the image centre with black fill, like DALI's ``fn.rotate`` and
    torchvision's ``rotate``. On the CPU a fused C kernel (:mod:`._native`) does both in one pass
    straight from the uint8 images into the float output; elsewhere (GPU, or no C compiler)
    ``grid_sample`` rotates the raw pixel values and one ``addcmul`` normalizes them straight into
    the output dtype and memory layout (see :meth:`configure`): rotation and the per-channel
    ``x * scale + shift`` commute, since the black fill is 0 either way. Calling with ``index``
    reads ``images[index]`` without gathering them first on the CPU (the cache). CPU outputs come
    from a small pool of buffers: a buffer is reused only once nothing else holds its storage
    (fresh 38 MB allocations cost 10-50 ms of page faults per batch on a small CPU), so a batch a
    caller keeps is never overwritten.
    """

    def __init__(self, normalization: Normalization, device: torch.device):
        mean = torch.tensor(normalization.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(normalization.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std)  # (x / 255 - mean) / std == x * scale + shift
        self.shift = -mean / std
        self.device = device
        self.dtype = torch.float32
        self.channels_last = False
        self._float: torch.Tensor | None = None
        self._grid: torch.Tensor | None = None
        self._outputs = _OutputPool()
        self.native = device.type == "cpu" and _native.kernel() is not None

    def configure(self, *, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> None:
        """Output dtype and memory layout: a bf16 channels-last trainer then converts nothing."""
        self.dtype = dtype
        self.channels_last = channels_last

    def __call__(
        self, images: torch.Tensor, angles: torch.Tensor | np.ndarray, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        angles = torch.as_tensor(angles, dtype=torch.float32)
        if self.native and images.device.type == "cpu" and images.dtype == torch.uint8 and images.is_contiguous():
            if index is None:
                index = torch.arange(len(images))
            out = self._outputs.take((len(index), *images.shape[1:]))
            out = _native.rotate_normalize(
                images, index, angles, self.scale, self.shift, out, threads=torch.get_num_threads()
            )
            return self._layout(out)
        if index is not None:
            images = images.reshape(len(images), -1).index_select(0, index).view(-1, *images.shape[1:])
        if bool((angles != 0).any()):
            images = self._rotate(images, angles)
        return self.normalize(images)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels * scale + shift`` in one pass: uint8 or float grey levels in, the output dtype and layout out."""
        out = torch.empty(
            pixels.shape, dtype=self.dtype, device=pixels.device,
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format,
        )  # fmt: skip
        return torch.addcmul(self.shift, pixels, self.scale, out=out)

    def _layout(self, batch: torch.Tensor) -> torch.Tensor:
        if self.dtype != batch.dtype:
            batch = batch.to(self.dtype)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def _rotate(self, images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Raw pixel values (float32) rotated; black fill 0."""
        n, _, h, w = images.shape
        device = images.device
        # Output pixel p samples the input at R(-angle) p (normalized coordinates, centre origin);
        # on screen (y down) that turns the picture counter-clockwise by +angle. Square images only,
        # so no aspect correction is needed. cos/sin on the host: a few hundred numbers.
        radians = angles * (math.pi / 180.0)
        trig = torch.stack([torch.cos(radians), torch.sin(radians)])
        if device.type == "cuda":
            trig = trig.pin_memory().to(device, non_blocking=True)
        cos, sin = trig[0].view(n, 1, 1), trig[1].view(n, 1, 1)
        xs = (torch.arange(w, dtype=torch.float32, device=device) * 2 + 1) / w - 1
        ys = (torch.arange(h, dtype=torch.float32, device=device) * 2 + 1) / h - 1
        xs, ys = xs.view(1, 1, w), ys.view(1, h, 1)
        grid = self._scratch("_grid", (n, h, w, 2), device)
        torch.sub(cos * xs, sin * ys, out=grid[..., 0])
        torch.add(sin * xs, cos * ys, out=grid[..., 1])
        pixels = self._scratch("_float", images.shape, device)
        pixels.copy_(images)
        return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _scratch(self, name: str, shape, device: torch.device) -> torch.Tensor:
        buffer = getattr(self, name)
        if buffer is None or buffer.device != device or buffer.numel() < math.prod(shape):
            buffer = torch.empty(math.prod(shape), dtype=torch.float32, device=device)
            setattr(self, name, buffer)
        return buffer[: math.prod(shape)].view(shape)


class BatchAugment:
    """Augment and normalize uint8 NCHW batches with a pipeline, into the trainer's dtype and layout.

    No augmentation, or rotation alone (the default), takes :class:`RotateNormalize`'s path: the
    fused C kernel on the CPU, exactly as before augmentations were plugins. Any other pipeline
    runs its torch steps (:meth:`AugmentPipeline.transform`) on the batch's device, its draws
    sent up without making the host wait for the device, then normalizes in one pass. Batches
    that DALI already augmented in its graph come with ``samples=None`` and are only normalized.
    """

    def __init__(self, augment: AugmentPipeline, normalization: Normalization, device: torch.device):
        self.augment = augment
        self.rotate_normalize = RotateNormalize(normalization, device)
        self.fused = [step.spec.name for step in augment.steps] in ([], ["rotate"])

    def configure(self, *, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> None:
        """Output dtype and memory layout (see :meth:`RotateNormalize.configure`)."""
        self.rotate_normalize.configure(dtype=dtype, channels_last=channels_last)

    def __call__(
        self, images: torch.Tensor, samples: tuple[np.ndarray, ...] | None, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``images`` (or ``images[index]``, the cache) augmented with ``samples``, one (n, k) array per step."""
        if samples is None or not self.augment.steps:
            count = len(images) if index is None else len(index)
            return self.rotate_normalize(images, np.zeros(count, np.float32), index)
        if self.fused:
            return self.rotate_normalize(images, samples[0][:, 0], index)
        if index is not None:
            images = images.reshape(len(images), -1).index_select(0, index).view(-1, *images.shape[1:])
        drawn = tuple(to_device(torch.from_numpy(np.ascontiguousarray(d)), images.device) for d in samples)
        return self.rotate_normalize.normalize(self.augment.transform(images, drawn))


class _OutputPool:
    """Float32 CPU batch buffers, reused only when no tensor outside the pool uses their storage.

    A partial batch is a leading slice of a full-size buffer. Without torch's storage use count
    (a private API) every batch gets a fresh tensor, which is always safe.
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._buffers: list[tuple[torch.Tensor, int]] = []  # (buffer, use count when only we hold it)

    @staticmethod
    def _uses(tensor: torch.Tensor) -> int | None:
        try:
            return int(torch._C._storage_Use_Count(tensor.untyped_storage()._cdata))
        except (AttributeError, TypeError, RuntimeError):  # a private API: gone or changed
            return None

    def take(self, shape) -> torch.Tensor:
        n, rest = shape[0], tuple(shape[1:])
        for buffer, alone in self._buffers:
            if tuple(buffer.shape[1:]) == rest and len(buffer) >= n and self._uses(buffer) == alone:
                return buffer[:n]
        buffer = torch.empty(shape, dtype=torch.float32)
        alone = self._uses(buffer)
        if alone is not None:
            if len(self._buffers) >= self.keep:
                self._buffers.pop(0)
            self._buffers.append((buffer, alone))
        # Always a view: the caller's tensor must hold its own reference to the storage, which
        # is what the use count sees (handing out the pool's own tensor object would not count).
        return buffer[:n]
