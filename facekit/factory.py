"""The one way to build a model from its registered name (as timm's ``create_model``).

Training, reading a run back and the benchmarks all build their networks here, so an
architecture plugin is built the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from facekit.specs import ArchOptions

if TYPE_CHECKING:  # torch is heavy; importing this module stays cheap
    import torch
    from torch import nn


def create_model(
    name: str,
    *,
    num_classes: int,
    input_size: int | None = None,
    finetune: bool = False,
    weights: Path | None = None,
    trust_weights: bool = False,
    pretrained: bool = True,
    device: "torch.device | str | None" = None,
    channels_last: bool = False,
) -> "nn.Module":
    """Build the registered architecture ``name`` with ``num_classes`` outputs.

    ``input_size`` None is the architecture's own. ``pretrained=False`` builds the same network
    randomly initialised (when a checkpoint will overwrite every weight anyway). The model is
    moved to ``device`` when given, and to channels-last memory format when asked.
    An unknown name is a :class:`facekit.errors.UsageError` naming the known ones.
    """
    import torch

    from facekit.plugins import architectures

    spec = architectures().get(name)
    options = ArchOptions(
        num_classes=num_classes,
        input_size=input_size or spec.input_size,
        finetune=finetune,
        weights=weights,
        trust_weights=trust_weights,
        pretrained=pretrained,
    )
    model = spec.build(options)
    if device is not None:
        model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
