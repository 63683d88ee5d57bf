"""Choosing the device a command runs on (``--device``)."""

from __future__ import annotations

import torch

from facekit.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), or a device this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA device(s); use cuda:0 to cuda:{count - 1}, or auto")
    return device
