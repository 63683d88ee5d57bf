"""The NVIDIA DALI backend: file reading, decoding and resizing inside a DALI pipeline.

The pipeline is ``fn.external_source`` (the file *names* of each batch, in the epoch plan's
order) -> ``fn.io.file.read`` (the bytes, read in DALI's C++ worker threads) -> ``fn.decoders.image``
-> ``fn.resize``, run asynchronously (pipelined, ``prefetch_queue_depth`` batches ahead) on
``num_workers`` threads, so reading and decoding the next batches overlap the training step. The
only per-batch Python work is handing DALI a list of pre-encoded names. On a CUDA device decoding
is ``device="mixed"`` (nvJPEG) and resizing runs on the GPU; the uint8 batches reach PyTorch as
CUDA tensors (channels-last, DALI's HWC layout, without a copy). Without a GPU DALI decodes and
resizes with CPU operators (``device_id=None``).

Augmentation: rotation alone (the default) and normalization run in the loader's
:class:`RotateNormalize`: facekit's fused C kernel on the CPU (~5x cheaper than DALI's CPU
``fn.rotate`` + ``fn.crop_mirror_normalize``), one ``grid_sample`` + one ``addcmul`` into the
trainer's dtype and layout on the GPU, exactly as on a warm decoded-image cache. Any other
pipeline whose steps all have DALI versions runs inside the graph after ``fn.resize``
(:meth:`AugmentPipeline.dali_graph`), each step fed its per-image draws from the plan through
the external source; the loader then only normalizes. With the decoded-image cache on, or a
step without a DALI version, DALI hands over plain images and the steps run in torch.

Names, not ``fn.readers.file``: a reader fixes its file list when the pipeline is built, while
the epoch order, the data-parallel shard and each image's angle come from the shared
:func:`plan_epoch` (seed + epoch, like DistributedSampler, identical to the torch backend); and
a reader pads or wraps its last batch, while here the last batch is simply smaller.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from facekit.data.augment import AugmentPipeline
from facekit.data.loaders._common import EpochPlan, RawBatch
from facekit.data.loaders.base import Loader
from facekit.data.loaders.options import LoaderOptions
from facekit.errors import FacekitError

PREFETCH = 2  # batches DALI prepares ahead of the one being trained on


@functools.lru_cache(maxsize=1)
def dali_problem() -> str | None:
    """Why DALI cannot be used here, or None when it imports."""
    try:
        from nvidia.dali import fn, pipeline_def, types  # noqa: F401
        from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor  # noqa: F401
    except Exception as err:  # noqa: BLE001 - ImportError, or a broken native library
        return f"cannot import nvidia.dali: {err}"
    return None


def dali_available() -> bool:
    """True when the DALI backend can be used here."""
    return dali_problem() is None


class _EpochNames:
    """DALI external source: one epoch of file-name batches (UTF-8 bytes as uint8) per ``iter()``.

    With ``draws`` on, each batch comes with one more output per augmentation step: every
    image's draws from the plan, a float32 array of shape (k,) per image.
    """

    def __init__(self, files: list[str], batch_size: int):
        # The bytes the file system holds: a name that is not valid UTF-8 still opens.
        self.encoded = [np.frombuffer(os.fsencode(f), dtype=np.uint8) for f in files]
        self.batch_size = batch_size
        self.plan: EpochPlan | None = None
        self.draws = False

    def __iter__(self):
        encoded = self.encoded
        for positions, samples in self.plan.batches(self.batch_size):
            names = [encoded[p] for p in positions.tolist()]
            yield (names, *(list(drawn) for drawn in samples)) if self.draws else names


def _build_pipeline(
    source: _EpochNames, *, batch_size: int, size: int, num_threads: int, device_id: int | None, seed: int,
    augment: AugmentPipeline | None, hw_decoder_load: float | None = None,
):  # fmt: skip
    """Names in, resized (and with ``augment``, augmented) uint8 images out: CHW on the CPU (the C kernel's layout), HWC on a GPU."""
    from nvidia.dali import fn, pipeline_def, types

    on_gpu = device_id is not None

    @pipeline_def(
        batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
        prefetch_queue_depth=PREFETCH, exec_async=True, exec_pipelined=True,
    )  # fmt: skip
    def pipeline():
        if augment is None:
            names = fn.external_source(source=source, batch=True, cycle="raise", dtype=types.UINT8, ndim=1)
        else:
            steps = len(augment.steps)
            names, *draws = fn.external_source(
                source=source, num_outputs=1 + steps, batch=True, cycle="raise",
                dtype=[types.UINT8] + [types.FLOAT] * steps, ndim=[1] * (1 + steps),
            )  # fmt: skip
        encoded = fn.io.file.read(names)
        # The mixed decoder splits JPEGs between the GPU's hardware decoder and nvJPEG's hybrid one.
        hardware = {"hw_decoder_load": hw_decoder_load} if on_gpu and hw_decoder_load is not None else {}
        images = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB, **hardware)
        # Linear interpolation with antialiasing, like torchvision's Resize(antialias=True).
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        if augment is not None:
            # The draws are CPU nodes: argument inputs, which GPU operators accept too.
            images = augment.dali_graph(images, draws)
        return images if on_gpu else fn.transpose(images, perm=[2, 0, 1])

    built = pipeline()
    built.build()
    return built


class DaliLoader(Loader):
    backend = "dali"

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int], options: LoaderOptions):
        super().__init__(files, labels, options)
        self.num_threads = max(1, options.num_workers)
        self._device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        self._source = _EpochNames(self.files, self.batch_size)
        self._pipeline = None
        self._mid_epoch = False  # a pipeline left mid-epoch still holds that epoch's prefetched batches
        self._in_graph = False  # whether the built pipeline augments (see _graph_augments)

    def _raw_batches(self, plan: EpochPlan) -> Iterator[RawBatch]:
        if len(plan.indices) == 0:
            return
        pipe = self._pipeline_for(plan)
        self._mid_epoch = True
        # DALI returns batches in the order the source gave them: the plan says which is which.
        for positions, samples in plan.batches(self.batch_size):
            try:
                (images,) = pipe.run()
            except RuntimeError as err:
                raise _decode_failure(err, [self.files[p] for p in positions.tolist()]) from err
            yield self._to_torch(images), torch.from_numpy(positions), None if self._in_graph else samples
        self._mid_epoch = False

    def _pipeline_for(self, plan: EpochPlan):
        self._source.plan = plan  # read when the pipeline (re)starts its source
        if self._pipeline is not None and not self._mid_epoch:
            self._pipeline.reset()
            return self._pipeline
        self._in_graph = self._source.draws = self._graph_augments()
        self._pipeline = _build_pipeline(
            self._source, batch_size=self.batch_size, size=self.input_size, num_threads=self.num_threads,
            device_id=self._device_id, seed=self.options.seed, augment=self.options.augment if self._in_graph else None,
            hw_decoder_load=self.options.hw_decoder_load,
        )  # fmt: skip
        self._mid_epoch = False
        return self._pipeline

    def _graph_augments(self) -> bool:
        """Augment inside DALI: every step has a DALI version, it is not rotation alone (the fused
        kernel's), and there is no decoded-image cache to fill (it must hold plain images)."""
        augment = self.options.augment
        return augment.runs_in_dali and not self._augment.fused and self._open_store() is None

    def _to_torch(self, batch) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

        # A copy: DALI reuses its output buffers for the next batch. On a GPU the copy stays on
        # the device, on the current PyTorch stream, and NHWC becomes a channels-last NCHW view.
        images = to_torch_tensor(batch.as_tensor(), copy=True)
        return images.permute(0, 3, 1, 2) if self._device_id is not None else images

    def close(self) -> None:
        super().close()
        self._pipeline = None


def _decode_failure(err: RuntimeError, files: list[str]) -> FacekitError:
    """One line for a batch DALI could not decode: the file at fault when it can be found, and what to do."""
    from facekit.data.index import image_problem

    for path in files:
        problem = image_problem(path)
        if problem is not None:
            return FacekitError(
                f"{path}: DALI cannot decode it ({problem}); replace or remove the file (`facekit data check` "
                "lists every such file), or use --loader torch, which skips it"
            )
    first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
    return FacekitError(
        f"DALI could not decode a batch of {len(files)} images starting with {files[0]} ({first}); "
        "use --loader torch, which skips a file it cannot decode"
    )
