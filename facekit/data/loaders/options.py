"""The options every loader takes, in one place, with the one set of limits that checks them."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

import torch

from facekit.config import BACKENDS, MIN_INPUT_SIZE, cache_choice
from facekit.data.augment import AugmentPipeline, augment_args
from facekit.errors import UsageError
from facekit.plugins import augmentations
from facekit.specs import Normalization

__all__ = ["BACKENDS", "MIN_INPUT_SIZE", "LoaderOptions", "available_cores", "default_workers"]

# More decoding threads than this stop paying off for one GPU and crowd the training process.
MAX_DEFAULT_THREADS = 8


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decoding threads or processes when ``num_workers`` is not given: the cores, up to 8."""
    return max(1, min(available_cores(), MAX_DEFAULT_THREADS))


@dataclass(frozen=True)
class LoaderOptions:
    """How a loader reads, augments and batches; :meth:`validate` checks them and fills defaults.

    ``output_dtype`` and ``channels_last`` let a CUDA trainer receive batches in the precision
    and memory layout its first convolution uses (bf16, channels-last) instead of converting
    float32 NCHW batches itself. ``augment`` is the training images' augmentation pipeline;
    ``rotate=DEG`` is short for the pipeline ``rotate:DEG`` (giving both is a usage error), and
    with neither training images get the default, ``rotate:15``. Validated options of an
    evaluation loader hold the empty pipeline: validation and test images are never augmented.

    ``cache`` is a ``--cache`` value (:func:`~facekit.data.decoded_cache.choose_cache`; True and
    False, the old flag, mean "auto" and "off"). ``cache_files`` are the files a disk cache
    covers, when the loader reads a part of a data set: give the whole set's files, and every
    split and fold of it shares one cache (default: the loader's own files).
    """

    batch_size: int
    input_size: int
    normalization: Normalization
    train: bool
    rotate: float | None = None
    augment: AugmentPipeline | None = None
    seed: int = 0
    device: torch.device | str = "cpu"
    backend: str = "auto"
    cache: str | bool = "off"
    cache_files: tuple[str, ...] | None = None
    num_workers: int | None = None  # None: default_workers()
    shard_id: int = 0
    num_shards: int = 1
    output_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    # DALI on a GPU: the share of JPEGs for the hardware decoder (NVJPG engines of A100/H100/H200),
    # the rest to nvJPEG's hybrid CPU+GPU decoder; None: DALI's default (0.65); 0: hybrid only.
    hw_decoder_load: float | None = None

    def validate(self) -> "LoaderOptions":
        """The same options with device, workers, cache spelling and augmentation pipeline resolved.

        The values a user gives (batch size, input size, rotation, workers, backend, cache) arrive
        checked by the run's settings (:meth:`facekit.config.TrainConfig.validated`) and are not
        checked again here; only what facekit itself sets (shards, output dtype, decoder share) is.
        """
        if not 0 <= self.shard_id < self.num_shards:
            raise UsageError(f"shard {self.shard_id} of {self.num_shards} does not exist")
        if self.hw_decoder_load is not None and not 0 <= self.hw_decoder_load <= 1:
            raise UsageError(f"hw_decoder_load {self.hw_decoder_load}: give a share between 0 and 1")
        if self.output_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise UsageError(f"output dtype {self.output_dtype}: use torch.float32, torch.bfloat16 or torch.float16")
        return replace(
            self,
            device=torch.device(self.device),
            backend=self.backend.lower(),
            cache=cache_choice(self.cache),
            cache_files=None if self.cache_files is None else tuple(map(str, self.cache_files)),
            rotate=None,
            augment=self._pipeline(),
            num_workers=default_workers() if self.num_workers is None else self.num_workers,
        )

    def _pipeline(self) -> AugmentPipeline:
        args = augment_args(None if self.augment is None else self.augment.to_args(), self.rotate)
        if not self.train:
            return AugmentPipeline()
        return self.augment if self.augment is not None else AugmentPipeline.from_args(args, augmentations())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))
