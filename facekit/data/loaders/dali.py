"""The NVIDIA DALI backend: decode, resize, rotate and normalize inside a DALI pipeline.

On a CUDA device the JPEG decoding is ``device="mixed"`` (nvJPEG) and every later operator
runs on the GPU; the batches reach PyTorch as CUDA tensors without a trip through host memory.
Without a GPU the pipeline decodes and resizes with CPU operators (``device_id=None``); rotation
and normalization then run in facekit's fused C kernel (:mod:`._native`), which is ~5x cheaper
than DALI's CPU ``fn.rotate`` + ``fn.crop_mirror_normalize``. The all-DALI CPU pipeline remains
the fallback where that kernel cannot be built.

The file bytes enter through ``fn.external_source`` rather than ``fn.readers.file``: the epoch
order, the data-parallel shard and each image's rotation angle then come from the shared
:func:`plan_epoch` (seed + epoch, like DistributedSampler, identical to the torch backend),
and the last batch is simply smaller, never padded with duplicates.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from facekit.data.loaders import Loader
from facekit.data.loaders._common import EpochPlan
from facekit.errors import FacekitError


@functools.lru_cache(maxsize=1)
def dali_problem() -> str | None:
    """Why DALI cannot be used here, or None when it imports and runs a CPU pipeline."""
    try:
        from nvidia.dali import fn, pipeline_def, types  # noqa: F401
        from nvidia.dali.plugin.pytorch import feed_ndarray  # noqa: F401
    except Exception as err:  # noqa: BLE001 - ImportError, or a broken native library
        return f"cannot import nvidia.dali: {err}"
    return None


def dali_available() -> bool:
    return dali_problem() is None


class _EpochSource:
    """DALI external source: one epoch of (encoded bytes, positions, angles) batches per ``iter()``."""

    def __init__(self, files: list[str], batch_size: int):
        self.files = files
        self.batch_size = batch_size
        self.plan: EpochPlan | None = None

    def __iter__(self):
        for positions, angles in self.plan.batches(self.batch_size):
            yield (
                [np.fromfile(self.files[p], dtype=np.uint8) for p in positions],
                [np.array(p, dtype=np.int64) for p in positions],
                [np.array(a, dtype=np.float32) for a in angles],
            )


def _build_pipeline(
    source: _EpochSource,
    *,
    batch_size: int,
    size: int,
    num_threads: int,
    device_id: int | None,
    seed: int,
    normalize: tuple[list[float], list[float]] | None,
    rotate: bool,
):
    """``normalize`` None gives the cache-filling variant: uint8 CHW, no rotation."""
    from nvidia.dali import fn, pipeline_def, types

    on_gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed, prefetch_queue_depth=2)
    def pipeline():
        encoded, positions, angles = fn.external_source(source=source, num_outputs=3, batch=True, cycle="raise")
        images = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
        # Linear interpolation with antialiasing, like torchvision's Resize(antialias=True).
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        if normalize is None:
            return fn.transpose(images, perm=[2, 0, 1]), positions, angles
        if rotate:
            images = fn.rotate(images, angle=angles, fill_value=0, keep_size=True, interp_type=types.INTERP_LINEAR)
        mean, std = normalize
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)
        return images, positions, angles

    built = pipeline()
    built.build()
    return built


class DaliLoader(Loader):
    backend = "dali"

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int], *, num_threads: int | None = None, **options):
        super().__init__(files, labels, **options)
        self.num_threads = num_threads or min(2, os.cpu_count() or 1)
        self._device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        self._pipelines: dict[bool, object] = {}  # keyed by "full" (True) or "cache filling" (False)
        self._sources: dict[bool, _EpochSource] = {}
        self._needs_rebuild: dict[bool, bool] = {}

    def _full_batches(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._augment.native:
            # CPU with the fused C kernel: DALI decodes and resizes (multithreaded C++); the kernel
            # rotates and normalizes ~5x faster than DALI's CPU fn.rotate + crop_mirror_normalize.
            yield from super()._full_batches(plan)
            return
        for images, positions, _ in self._run(plan, full=True):
            yield images, self._labels_on_device[positions.to(self.device)]

    def _raw_batches(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self._run(plan, full=False)

    def _run(self, plan: EpochPlan, *, full: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if len(plan.indices) == 0:
            return
        pipe = self._pipeline_for(plan, full)
        finished = False
        try:
            while True:
                try:
                    images, positions, angles = pipe.run()
                except StopIteration:
                    finished = True
                    return
                except RuntimeError as err:
                    raise FacekitError(
                        f"DALI could not decode a batch ({str(err).splitlines()[0]}); "
                        "run `facekit data check` on the data set, or use --loader torch, which skips bad files"
                    ) from err
                yield self._to_torch(images), self._to_torch(positions).view(-1), self._to_torch(angles).view(-1)
        finally:
            # A pipeline left mid-epoch still holds prefetched batches of that epoch: rebuild it.
            self._needs_rebuild[full] = not finished

    def _pipeline_for(self, plan: EpochPlan, full: bool):
        if full not in self._sources:
            self._sources[full] = _EpochSource(self.files, self.batch_size)
        self._sources[full].plan = plan  # read when the pipeline (re)starts its source
        pipe = self._pipelines.get(full)
        if pipe is not None and not self._needs_rebuild.get(full, False):
            pipe.reset()
            return pipe
        mean = [255.0 * m for m in self.normalization.mean]
        std = [255.0 * s for s in self.normalization.std]
        self._pipelines[full] = _build_pipeline(
            self._sources[full],
            batch_size=self.batch_size,
            size=self.input_size,
            num_threads=self.num_threads,
            device_id=self._device_id,
            seed=self.seed,
            normalize=(mean, std) if full else None,
            rotate=self.rotate > 0,
        )
        self._needs_rebuild[full] = False
        return self._pipelines[full]

    def _to_torch(self, batch) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

        # A copy: DALI reuses its output buffers for the next batch. On a GPU the copy stays on
        # the device, on the current PyTorch stream.
        return to_torch_tensor(batch.as_tensor(), copy=True)

    def close(self) -> None:
        super().close()
        self._pipelines.clear()
        self._sources.clear()
