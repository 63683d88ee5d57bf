"""Batches of (images, labels) for training and evaluation: a DALI backend and a torchvision one.

Both backends follow one recipe: decode -> RGB -> resize to input_size x input_size (plain
resize) -> rotate by a random angle (training) -> ``(x / 255 - mean) / std`` -> float32 NCHW.
The order and angles of an epoch come from :func:`plan_epoch` (a function of seed and epoch),
so both backends visit the same images in the same order with the same angles.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from facekit.api import Normalization
from facekit.data.loaders._common import EpochPlan, RotateNormalize, plan_epoch, shard_size
from facekit.errors import UsageError

BACKENDS = ("dali", "torch")


class Loader:
    """One epoch per ``iter()``: ``(images, labels)`` batches on ``device``.

    Subclasses provide ``_raw_batches`` (uint8 NCHW images, positions, angles) and may override
    ``_full_batches`` with a pipeline that rotates and normalizes itself.
    """

    backend = "?"

    def __init__(
        self,
        files: Sequence[str | Path],
        labels: Sequence[int],
        *,
        batch_size: int,
        input_size: int,
        normalization: Normalization,
        train: bool,
        rotate: float,
        seed: int,
        device: torch.device,
        cache: bool,
        shard_id: int,
        num_shards: int,
    ):
        self.files = [str(f) for f in files]
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if len(self.files) != len(self.labels):
            raise UsageError(f"{len(self.files)} files but {len(self.labels)} labels; give one label per file")
        self.batch_size = batch_size
        self.input_size = input_size
        self.normalization = normalization
        self.train = train
        self.rotate = float(rotate) if train else 0.0
        self.seed = seed
        self.device = device
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.cache = cache
        self._augment = RotateNormalize(normalization, device)
        self._labels_on_device = self.labels.to(device)
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
        return shard_size(len(self.files), train=self.train, shard_id=self.shard_id, num_shards=self.num_shards)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter()`` plays this epoch (shuffle and angles depend on seed + epoch)."""
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = plan_epoch(
            len(self.files),
            epoch=self._epoch,
            seed=self.seed,
            train=self.train,
            rotate=self.rotate,
            shard_id=self.shard_id,
            num_shards=self.num_shards,
        )
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
            yield self._augment(images, angles), self._labels_on_device[positions.to(self.device)]

    # -- the decoded-image cache --------------------------------------------------------------
    def _filling_cache(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.input_size
        if self._cached is None:
            self._cached = torch.empty((len(self.files), 3, size, size), dtype=torch.uint8, device=self.device)
            self._cached_ok = torch.zeros(len(self.files), dtype=torch.bool, device=self.device)
        for images, positions, angles in self._raw_batches(plan):
            on_device = positions.to(self.device)
            # index_copy_/index_select on the flattened view: the 4-D uint8 versions are ~100x slower on CPU.
            self._cached.view(len(self.files), -1).index_copy_(0, on_device, images.reshape(len(images), -1))
            self._cached_ok[on_device] = True
            yield self._augment(images, angles), self._labels_on_device[on_device]
        # Reached only when the epoch ran to its end. A data-parallel training shard reads a random
        # subset, so it keeps decoding until every image has been tried once.
        self._attempted[plan.indices] = True
        self._cache_complete = bool(self._attempted.all())

    def _from_cache(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for positions, angles in plan.batches(self.batch_size):
            index = torch.from_numpy(positions).to(self.device)
            decoded = self._cached_ok[index]
            if not bool(decoded.all()):  # files that failed to decode stay skipped
                index, angles = index[decoded], angles[decoded.cpu().numpy()]
            if len(index) == 0:
                continue
            # Reads the selected images straight from the cache (no gathered copy on the CPU).
            yield self._augment(self._cached, angles, index=index), self._labels_on_device[index]


def available_backends() -> list[str]:
    """The loader backends that work here, preferred first."""
    from facekit.data.loaders import dali

    return (["dali"] if dali.dali_available() else []) + ["torch"]


def make_loader(
    files: Sequence[str | Path],
    labels: Sequence[int],
    *,
    batch_size: int,
    input_size: int,
    normalization: Normalization,
    train: bool,
    rotate: float = 15.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    cache: bool = False,
    num_workers: int | None = None,
    shard_id: int = 0,
    num_shards: int = 1,
) -> Loader:
    """A loader over ``files``; ``backend`` is "dali", "torch" or "auto" (DALI where it works)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: give a positive number")
    if input_size < 8:
        raise UsageError(f"input size {input_size} is too small; use at least 8 pixels")
    if rotate < 0 or rotate > 180:
        raise UsageError(f"--rotate {rotate}: give a range in degrees between 0 and 180 (0 turns rotation off)")
    if not 0 <= shard_id < num_shards:
        raise UsageError(f"shard {shard_id} of {num_shards} does not exist")
    device = torch.device(device)
    options = dict(
        batch_size=batch_size,
        input_size=input_size,
        normalization=normalization,
        train=train,
        rotate=rotate,
        seed=seed,
        device=device,
        cache=cache,
        shard_id=shard_id,
        num_shards=num_shards,
    )
    choice = backend.lower()
    if choice not in ("auto", *BACKENDS):
        raise UsageError(f"unknown loader {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
    if choice in ("auto", "dali"):
        from facekit.data.loaders import dali

        if dali.dali_available():
            return dali.DaliLoader(files, labels, num_threads=num_workers, **options)
        if choice == "dali":
            raise UsageError(f"--loader dali: DALI does not work here ({dali.dali_problem()}); use --loader torch")
    from facekit.data.loaders.torch_loader import TorchLoader

    return TorchLoader(files, labels, num_workers=num_workers, **options)


def warn_skipped(paths: Sequence[str]) -> None:
    for path in paths:
        warnings.warn(f"skipping {path}: it could not be decoded (run `facekit data check`)", RuntimeWarning, stacklevel=3)
