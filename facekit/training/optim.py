"""The optimizer over an architecture's parameters, and frozen layers that stay frozen."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facekit.errors import FacekitError
from facekit.specs import ArchitectureSpec


def build_optimizer(model: nn.Module, arch: ArchitectureSpec, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over the architecture's parameter groups (its ``param_groups`` hook), else every trainable parameter."""
    if arch.param_groups is not None:
        params: list[Any] = arch.param_groups(model, lr)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise FacekitError(f"architecture {arch.name!r} has no trainable parameter")
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def keep_frozen_batchnorm_in_eval(model: nn.Module) -> None:
    """A frozen layer stays frozen: batch norms with no trainable parameter keep their running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
