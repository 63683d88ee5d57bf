"""Batches of (images, labels) for training and evaluation: a DALI backend and a torchvision one.

Both backends follow one recipe: decode -> RGB -> resize to input_size x input_size (plain
resize) -> augment (training only; random rotation by default, see :mod:`facekit.data.augment`)
-> ``(x / 255 - mean) / std`` -> NCHW batches (float32 unless ``output_dtype`` says otherwise).
The order and augmentation draws of an epoch come from :func:`plan_epoch` (a function of seed
and epoch), so both backends visit the same images in the same order with the same draws.

Layout: :mod:`.options` (the options and their limits), :mod:`.base` (the :class:`Loader` every
backend extends), :mod:`.dali` and :mod:`.torch_loader` (the backends), :mod:`.choice` (which one
``auto`` means, per device and use); this module only builds the one picked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from facekit.data.loaders import dali
from facekit.data.loaders.base import Loader
from facekit.data.loaders.choice import auto_backend, describe_backends
from facekit.data.loaders.options import LoaderOptions
from facekit.data.loaders.torch_loader import TorchLoader
from facekit.errors import UsageError

__all__ = ["Loader", "LoaderOptions", "available_backends", "describe_loaders", "make_loader"]


def available_backends() -> list[str]:
    """The loader backends that work here, preferred first."""
    return (["dali"] if dali.dali_available() else []) + ["torch"]


def describe_loaders(backend: str, device: torch.device | str) -> str:
    """One line saying which backend ``--loader backend`` trains with and which evaluates with on ``device``."""
    dali_works = backend.lower() != "auto" or dali.dali_available()  # an explicit choice was checked already
    return describe_backends(backend, torch.device(device).type, dali_works=dali_works)


def make_loader(
    files: Sequence[str | Path], labels: Sequence[int], *, options: LoaderOptions | None = None, **fields: Any
) -> Loader:
    """A loader over ``files``: give ``options``, or its fields as keywords (``batch_size=...``).

    ``backend`` is "dali", "torch" or "auto": the backend measured faster on this device for
    this use, training or evaluation (:mod:`.choice`), torch where DALI does not work.
    """
    if options is None:
        unknown = sorted(set(fields) - set(LoaderOptions.names()))
        if unknown:
            raise TypeError(f"make_loader() got unexpected keyword argument(s): {', '.join(unknown)}")
        options = LoaderOptions(**fields)
    elif fields:
        raise TypeError("make_loader(): give either options= or its fields as keywords, not both")
    options = options.validate()
    if options.backend == "auto":
        backend = auto_backend(options.device.type, train=options.train, dali_works=dali.dali_available())
    else:
        backend = options.backend
    if backend == "dali":
        if not dali.dali_available():
            raise UsageError(f"--loader dali: DALI does not work here ({dali.dali_problem()}); use --loader torch")
        return dali.DaliLoader(files, labels, options)
    return TorchLoader(files, labels, options)
