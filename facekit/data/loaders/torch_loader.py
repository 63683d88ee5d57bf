"""The torchvision backend: worker processes decode and resize; augmentation and normalization run batched.

Workers return uint8 images (a quarter of the bytes of float32 through shared memory); the
main process augments and normalizes whole batches on the target device (GPU when training
there). A file that fails to decode mid-epoch is skipped with a warning, never a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facekit.data.loaders._common import EpochPlan, RawBatch, decode_resized
from facekit.data.loaders.base import Loader
from facekit.data.loaders.options import LoaderOptions


class _DecodeDataset(Dataset):
    """Item key ``(position, row)`` -> ``(uint8 image or None, position, row, path)``; ``row`` is the place in the plan."""

    def __init__(self, files: list[str], size: int):
        self.files = files
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]):
        position, row = key
        try:
            image = decode_resized(self.files[position], self.size)
        except Exception:  # noqa: BLE001 - any decoder failure means "skip this file"
            image = None
        return image, position, row, self.files[position]


def _collate(items):
    kept = [item for item in items if item[0] is not None]
    failed = [item[3] for item in items if item[0] is None]
    if not kept:
        return None, None, None, failed
    images = torch.stack([item[0] for item in kept])
    positions = torch.tensor([item[1] for item in kept], dtype=torch.int64)
    rows = torch.tensor([item[2] for item in kept], dtype=torch.int64)
    return images, positions, rows, failed


class _PlanSampler(Sampler):
    """Yields the current epoch's batches of (position, row in the plan) keys; iterated in the main process."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.plan: EpochPlan | None = None

    def __iter__(self):
        indices = self.plan.indices.tolist()
        for start in range(0, len(indices), self.batch_size):
            rows = range(start, min(start + self.batch_size, len(indices)))
            yield [(indices[row], row) for row in rows]

    def __len__(self) -> int:
        return -(-len(self.plan.indices) // self.batch_size)


class TorchLoader(Loader):
    backend = "torch"

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int], options: LoaderOptions):
        super().__init__(files, labels, options)
        self.num_workers = options.num_workers
        self._sampler = _PlanSampler(self.batch_size)
        self._loader = DataLoader(
            _DecodeDataset(self.files, self.input_size),
            batch_sampler=self._sampler,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.num_workers > 0,  # no process start-up cost per epoch
            prefetch_factor=4 if self.num_workers > 0 else None,
        )

    def _raw_batches(self, plan: EpochPlan) -> Iterator[RawBatch]:
        if len(plan.indices) == 0:
            return
        self._sampler.plan = plan
        for images, positions, rows, failed in self._loader:
            if failed:
                self._note_undecodable(failed)
            if images is None:
                continue
            # The draws of the images that decoded (a failed file drops its row).
            samples = tuple(drawn[rows.numpy()] for drawn in plan.samples)
            yield images.to(self.device, non_blocking=True), positions, samples

    def close(self) -> None:
        super().close()
        # Persistent workers exit when their iterator is dropped.
        self._loader = None
