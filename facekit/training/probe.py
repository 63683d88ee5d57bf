"""One image through a freshly built model, before a run writes anything.

Bad weights, an architecture that cannot be built, or an ``--input-size`` too small for the
network fail in a second with the option to change, instead of after the data is indexed.
"""

from __future__ import annotations

import torch
from torch import nn

from facekit.config import TrainConfig
from facekit.errors import FacekitError, UsageError
from facekit.factory import create_model
from facekit.specs import ArchitectureSpec
from facekit.training.optim import build_optimizer


def check_model(arch: ArchitectureSpec, config: TrainConfig, input_size: int) -> None:
    """Build ``arch`` once at ``input_size`` and run one image through it; a UsageError names what to change."""
    try:
        model = probe(arch, config, input_size, pretrained=True)
    except FacekitError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a plugin's or torch's error, told apart below
        cause = exc
        failure = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        build_optimizer(model, arch, config.lr, config.weight_decay)  # is there anything to train?
        return
    if (arch.pretrained or config.weights is not None) and probe_works(arch, config, input_size):
        # The same network at the same size works without its pretrained weights: they are at fault.
        if config.weights is not None:
            raise UsageError(
                f"--weights {config.weights}: not weights for architecture {arch.name!r} ({failure}); "
                "give that architecture's weights file"
            ) from cause
        raise FacekitError(
            f"architecture {arch.name!r}: its pretrained weights do not load ({failure}); "
            "if they are a cached download, delete that file to fetch it again, or pass --weights FILE"
        ) from cause
    if input_size < arch.input_size and probe_works(arch, config, arch.input_size):
        smallest = smallest_input_size(arch, config, input_size + 1, arch.input_size)
        raise UsageError(
            f"--input-size {input_size} is too small for architecture {arch.name!r}: give at least {smallest}"
        ) from cause
    raise FacekitError(
        f"architecture {arch.name!r} could not be built for {input_size}x{input_size} images ({failure})"
    ) from cause


def probe(arch: ArchitectureSpec, config: TrainConfig, size: int, *, pretrained: bool) -> nn.Module:
    """The architecture built for two classes at ``size``, after one zero image went through it."""
    model = create_model(
        arch.name,
        num_classes=2,
        input_size=size,
        finetune=config.finetune,
        weights=config.weights,
        trust_weights=config.trust_weights,
        pretrained=pretrained,
        loss=config.loss,
        loss_options=config.loss_options,
    )
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return model


def probe_works(arch: ArchitectureSpec, config: TrainConfig, size: int) -> bool:
    """Whether the randomly initialised network takes ``size`` pixels."""
    try:
        probe(arch, config, size, pretrained=False)
    except Exception:  # noqa: BLE001 -- any failure means "not at this size"
        return False
    return True


def smallest_input_size(arch: ArchitectureSpec, config: TrainConfig, low: int, high: int) -> int:
    """The smallest size in ``low..high`` the architecture takes (``high`` does); sizes grow monotonically."""
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if probe_works(arch, config, middle) else (middle + 1, high)
    return high
