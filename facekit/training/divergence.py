"""Divergence: the loss or a weight stops being a finite number, and what the user is told then."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facekit.errors import FacekitError


class TrainingDiverged(FacekitError):
    """The loss stopped being a finite number; the run keeps its last good state."""


def all_finite(model: nn.Module, losses: list[float]) -> bool:
    """False once training has diverged: a loss, a weight or a buffer is not a finite number (one sync per epoch)."""
    if not all(math.isfinite(loss) for loss in losses):
        return False
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def divergence_message(
    run_dir: Path | None, lr: float, fold: int, epoch: int, result: dict[str, Any] | None, folds: int
) -> str:
    """What happened, what the run keeps, and how to go on: ``result`` is the diverged fold's, None when it has none."""
    text = (
        f"training diverged in fold {fold} at epoch {epoch}: the loss is no longer a finite number, "
        f"so --lr {lr:g} is too high; train a new run with a lower --lr (e.g. 10 times lower)."
    )
    if result is None:
        return text + " No epoch had finished before it, so the run has no results."
    text += (
        f" The run keeps fold {fold}'s best epoch before it ({result['best_epoch']}) as its result: "
        f"`facekit report {run_dir}`"
    )
    if fold + 1 < folds:
        rest = f"fold {fold + 1} was" if fold + 2 == folds else f"folds {fold + 1}-{folds - 1} were"
        text += f"; {rest} not trained (`facekit train --resume {run_dir}` would, with the same --lr)"
    return text + "."
