"""The loader every backend extends: epochs from the shared plan, the decoded-image cache, batching."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from facekit.data.decoded_cache import MISSING, UNDECODABLE, WRITTEN, DiskImageCache, choose_cache, format_bytes
from facekit.data.loaders._common import BatchAugment, EpochPlan, RawBatch, plan_epoch, shard_size, to_device
from facekit.data.loaders.options import LoaderOptions
from facekit.errors import UsageError


class Loader:
    """One epoch per ``iter()``: ``(images, labels)`` batches on ``options.device``.

    Subclasses provide ``_raw_batches`` (uint8 NCHW images, positions, augmentation draws); the
    base class augments and normalizes them (:class:`BatchAugment`) and keeps the
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
        self._augment = BatchAugment(options.augment, options.normalization, self.device)
        self._augment.configure(dtype=options.output_dtype, channels_last=options.channels_last)
        self._labels_on_device = self.labels.to(self.device)
        self._epoch = 0
        # The decoded-image cache (see _open_store), chosen on the first epoch.
        self._store: _MemoryStore | _DiskStore | None = None
        self._store_chosen = False
        self._rows = np.arange(len(self.files), dtype=np.int64)  # the cache row of each file
        # Files that could not be decoded (or were marked so in the cache) in the epochs played so far:
        # evaluation must know its results lack them.
        self.undecodable: list[str] = []

    # -- public -----------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples this shard yields per epoch (training shards are padded to equal length)."""
        o = self.options
        return shard_size(len(self.files), train=o.train, shard_id=o.shard_id, num_shards=o.num_shards)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter()`` plays this epoch (shuffle and augmentation depend on seed + epoch)."""
        self._epoch = int(epoch)

    def plan(self, epoch: int) -> EpochPlan:
        """This shard's samples, in order, and their augmentation draws for ``epoch``."""
        o = self.options
        return plan_epoch(
            len(self.files), epoch=epoch, seed=o.seed, train=o.train, augment=o.augment,
            shard_id=o.shard_id, num_shards=o.num_shards,
        )  # fmt: skip

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.plan(self._epoch)
        self._epoch += 1
        store = self._open_store()
        if store is None:
            return self._full_batches(plan)
        store.verify(self._rows)  # damaged entries become missing: decoded again below
        if bool((store.state[self._rows] != MISSING).all()):
            return self._from_cache(plan)
        return self._filling_cache(plan)

    @property
    def cache_in_use(self) -> str:
        """Where the decoded images are kept: "off", "ram, 0.7 GB", "disk, 74.4 GB at FOLDER", ...

        Decided on the first epoch (or on this first call) from ``cache`` and the memory free
        then (:func:`~facekit.data.decoded_cache.choose_cache`).
        """
        store = self._open_store()
        return "off" if store is None else store.describe()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self._store, self._store_chosen = None, False

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _note_undecodable(self, paths: Sequence[str], *, warn: bool = True) -> None:
        """Record files skipped because they do not decode (and warn, once per file, when ``warn``)."""
        new = [path for path in paths if path not in self.undecodable]
        self.undecodable.extend(new)
        if warn and new:
            warn_skipped(new)

    # -- backend hooks ----------------------------------------------------------------------
    def _raw_batches(self, plan: EpochPlan) -> Iterator[RawBatch]:
        """(uint8 NCHW images on device, positions int64, per-step draws) per batch.

        The draws are the plan's rows for the images delivered, or None when the backend already
        augmented the images (DALI's graph).
        """
        raise NotImplementedError

    def _full_batches(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, positions, samples in self._raw_batches(plan):
            yield self._augment(images, samples), self._labels_on_device[to_device(positions, self.device)]

    # -- the decoded-image cache --------------------------------------------------------------
    def _open_store(self) -> "_MemoryStore | _DiskStore | None":
        if not self._store_chosen:
            kind = choose_cache(len(self.files), self.input_size, self.device, self.cache)
            if kind == "disk":
                scope = list(self.options.cache_files or self.files)
                cache = DiskImageCache.open(scope, self.input_size, decoder=f"{self.backend}-{self.device.type}")
                for note in cache.notes:
                    warnings.warn(note, RuntimeWarning, stacklevel=3)
                self._store = _DiskStore(cache)
                self._rows = _rows_in(scope, self.files)
            elif kind != "off":
                self._store = _MemoryStore(kind, len(self.files), self.input_size, self.device)
            self._store_chosen = True
        return self._store

    def _filling_cache(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        store = self._store
        decoded = np.zeros(len(self.files), dtype=bool)
        for images, positions, samples in self._raw_batches(plan):
            store.put(self._rows[positions.numpy()], images)
            decoded[positions.numpy()] = True
            yield self._augment(images, samples), self._labels_on_device[to_device(positions, self.device)]
        # Reached only when the epoch ran to its end: what it tried and could not decode stays
        # skipped. A data-parallel training shard reads a random subset, so it keeps decoding
        # until every image has been tried once.
        attempted = np.unique(plan.indices)
        store.put_undecodable(self._rows[attempted[~decoded[attempted]]])
        store.commit()

    def _from_cache(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Which entries hold an image, read on the host once: a device-side test per batch would
        # make the CPU wait for the GPU every batch and stop it queueing work ahead.
        store = self._store
        written = store.state[self._rows] == WRITTEN
        for positions, samples in plan.batches(self.batch_size):
            if not written[positions].all():  # files that failed to decode stay skipped
                keep = written[positions]
                self._note_undecodable([self.files[p] for p in positions[~keep]], warn=False)
                positions, samples = positions[keep], tuple(drawn[keep] for drawn in samples)
            if len(positions) == 0:
                continue
            labels = self._labels_on_device[to_device(torch.from_numpy(positions), self.device)]
            rows = torch.from_numpy(self._rows[positions])
            if store.images.device.type == self.device.type:
                # Reads the selected images straight from the cache (no gathered copy).
                yield self._augment(store.images, samples, index=to_device(rows, self.device)), labels
            else:  # host RAM or disk, training on a GPU: gather the rows into pinned memory, copy over
                yield self._augment(_gathered_to_device(store.images, rows, self.device), samples), labels


class _MemoryStore:
    """Decoded images in a tensor on the training device ("device") or in host RAM ("ram")."""

    def __init__(self, kind: str, num_images: int, size: int, device: torch.device):
        self.kind = kind
        where = device if kind == "device" else torch.device("cpu")
        self.images = torch.empty((num_images, 3, size, size), dtype=torch.uint8, device=where)
        self.state = np.zeros(num_images, dtype=np.uint8)

    def put(self, rows: np.ndarray, images: torch.Tensor) -> None:
        index = to_device(torch.from_numpy(rows), self.images.device)
        # index_copy_ on the flattened view: the 4-D uint8 version is ~100x slower on CPU. reshape,
        # not view: a GPU batch may arrive channels-last.
        flat = images.to(self.images.device).contiguous().reshape(len(rows), -1)
        self.images.view(len(self.images), -1).index_copy_(0, index, flat)
        self.state[rows] = WRITTEN

    def put_undecodable(self, rows: np.ndarray) -> None:
        self.state[rows] = UNDECODABLE

    def verify(self, rows: np.ndarray) -> None:
        pass  # in this process's memory: nothing else writes it

    def commit(self) -> None:
        pass  # nothing is shared

    def describe(self) -> str:
        return f"{self.kind}, {format_bytes(self.images.numel())}"

    def close(self) -> None:
        self.images = None


class _DiskStore:
    """A :class:`DiskImageCache` seen as tensors; only the images it lacks are written."""

    def __init__(self, cache: DiskImageCache):
        self.cache = cache
        with warnings.catch_warnings():  # the map is read-only, and only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            self.images = torch.from_numpy(cache.images)
        self.state = cache.state

    def put(self, rows: np.ndarray, images: torch.Tensor) -> None:
        lacking = self.state[rows] == MISSING
        if not lacking.all():
            rows, images = rows[lacking], images[torch.from_numpy(lacking).to(images.device)]
        if len(rows):
            self.cache.put(rows, images.contiguous().cpu().numpy())

    def put_undecodable(self, rows: np.ndarray) -> None:
        self.cache.put_undecodable(rows)

    def verify(self, rows: np.ndarray) -> None:
        """Check the entries ``rows`` against their checksums (once per process); damaged ones are decoded again."""
        damaged = self.cache.verify(rows)
        if len(damaged):
            warnings.warn(
                f"decoded-image cache at {self.cache.folder}: {len(damaged)} entries fail their checksum (damaged on "
                "disk); decoding those images again",
                RuntimeWarning,
                stacklevel=4,
            )

    def commit(self) -> None:
        self.cache.commit()

    def describe(self) -> str:
        return self.cache.describe()

    def close(self) -> None:
        self.cache.close()


def _rows_in(scope: list[str], files: list[str]) -> np.ndarray:
    """Where each of ``files`` sits in ``scope`` (the files a disk cache covers)."""
    position = {path: row for row, path in enumerate(scope)}
    missing = [path for path in files if path not in position]
    if missing:
        raise UsageError(f"{missing[0]} is not among the cache_files given to the loader; give the data set's files")
    return np.asarray([position[path] for path in files], dtype=np.int64)


def _gathered_to_device(images: torch.Tensor, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``images[rows]`` of a host tensor on ``device``: gathered into pinned memory, copied without waiting."""
    flat = images.view(len(images), -1)
    # torch's pinned-memory allocator does not reuse the buffer before the copy has finished.
    batch = torch.empty((len(rows), flat.shape[1]), dtype=torch.uint8, pin_memory=True)
    torch.index_select(flat, 0, rows, out=batch)
    return batch.view(-1, *images.shape[1:]).to(device, non_blocking=True)


def warn_skipped(paths: Sequence[str]) -> None:
    """One warning per file that could not be decoded mid-epoch."""
    for path in paths:
        warnings.warn(f"skipping {path}: it could not be decoded (run `facekit data check`)", RuntimeWarning, stacklevel=3)
