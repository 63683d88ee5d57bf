"""The loader every backend extends: epochs from the shared plan, the decoded-image cache, batching."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from facekit.data.loaders._common import EpochPlan, RotateNormalize, plan_epoch, shard_size
from facekit.data.loaders.options import LoaderOptions
from facekit.errors import UsageError


class Loader:
    """One epoch per ``iter()``: ``(images, labels)`` batches on ``options.device``.

    Subclasses provide ``_raw_batches`` (uint8 NCHW images, positions, angles); the base class
    rotates and normalizes them (one fused pass, see :class:`RotateNormalize`) and keeps the
    decoded-image cache. ``options`` must be validated (:meth:`LoaderOptions.validate`).
    """

    backend = "?"

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int], options: LoaderOptions):
        self.files = [str(f) for f in files]
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if len(self.files) != len(self.labels):
            raise UsageError(f"{len(self.files)} files but {len(self.labels)} labels; give one label per file")
        self.options = options
        self.device: torch.device = options.device
        self.batch_size = options.batch_size
        self.input_size = options.input_size
        self.cache = options.cache  # may be switched before the first epoch (the benchmarks do)
        self._augment = RotateNormalize(options.normalization, self.device)
        self._augment.configure(dtype=options.output_dtype, channels_last=options.channels_last)
        self._labels_on_device = self.labels.to(self.device)
        self._epoch = 0
        # The decoded-image cache: uint8 (N, 3, S, S) on the device, filled during the first epoch.
        self._cached: torch.Tensor | None = None
        self._cached_ok: torch.Tensor | None = None  # which entries hold a decoded image
        self._attempted = np.zeros(len(self.files), dtype=bool)  # which files a finished epoch tried
        self._cache_complete = False

    # -- public -----------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples this shard yields per epoch (training shards are padded to equal length)."""
        o = self.options
        return shard_size(len(self.files), train=o.train, shard_id=o.shard_id, num_shards=o.num_shards)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter()`` plays this epoch (shuffle and angles depend on seed + epoch)."""
        self._epoch = int(epoch)

    def plan(self, epoch: int) -> EpochPlan:
        """This shard's samples, in order, and their angles for ``epoch``."""
        o = self.options
        return plan_epoch(
            len(self.files), epoch=epoch, seed=o.seed, train=o.train, rotate=o.rotate,
            shard_id=o.shard_id, num_shards=o.num_shards,
        )  # fmt: skip

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.plan(self._epoch)
        self._epoch += 1
        if not self.cache:
            return self._full_batches(plan)
        if self._cache_complete:
            return self._from_cache(plan)
        return self._filling_cache(plan)

    def close(self) -> None:
        self._cached = None

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- backend hooks ----------------------------------------------------------------------
    def _raw_batches(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(uint8 NCHW images on device, positions int64, angles float32) per batch."""
        raise NotImplementedError

    def _full_batches(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, positions, angles in self._raw_batches(plan):
            yield self._augment(images, angles), self._labels_on_device[_to_device(positions, self.device)]

    # -- the decoded-image cache --------------------------------------------------------------
    def _filling_cache(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.input_size
        if self._cached is None:
            self._cached = torch.empty((len(self.files), 3, size, size), dtype=torch.uint8, device=self.device)
            self._cached_ok = torch.zeros(len(self.files), dtype=torch.bool, device=self.device)
        for images, positions, angles in self._raw_batches(plan):
            on_device = _to_device(positions, self.device)
            # index_copy_/index_select on the flattened view: the 4-D uint8 versions are ~100x slower
            # on CPU. reshape, not view: a GPU batch may arrive channels-last.
            self._cached.view(len(self.files), -1).index_copy_(0, on_device, images.contiguous().reshape(len(images), -1))
            self._cached_ok[on_device] = True
            yield self._augment(images, angles), self._labels_on_device[on_device]
        # Reached only when the epoch ran to its end. A data-parallel training shard reads a random
        # subset, so it keeps decoding until every image has been tried once.
        self._attempted[plan.indices] = True
        self._cache_complete = bool(self._attempted.all())

    def _from_cache(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Which entries hold an image, read on the host once: a device-side test per batch would
        # make the CPU wait for the GPU every batch and stop it queueing work ahead.
        decoded = self._cached_ok.cpu().numpy()
        for positions, angles in plan.batches(self.batch_size):
            if not decoded[positions].all():  # files that failed to decode stay skipped
                keep = decoded[positions]
                positions, angles = positions[keep], angles[keep]
            if len(positions) == 0:
                continue
            index = _to_device(torch.from_numpy(positions), self.device)
            # Reads the selected images straight from the cache (no gathered copy).
            yield self._augment(self._cached, angles, index=index), self._labels_on_device[index]


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without making the host wait for the device's queue."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def warn_skipped(paths: Sequence[str]) -> None:
    """One warning per file that could not be decoded mid-epoch."""
    for path in paths:
        warnings.warn(f"skipping {path}: it could not be decoded (run `facekit data check`)", RuntimeWarning, stacklevel=3)
