"""Per-fold training decisions with their own state: when to stop, which epoch to keep.

Each has ``state_dict()`` / ``load_state_dict()`` (as Lightning's callbacks do), so a checkpoint
saves it and a resumed fold continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
    """Stop after ``patience`` epochs in a row without a lower validation loss; patience 0 never stops."""

    def __init__(self, patience: int = 0):
        self.patience = patience
        self.best_val_loss = math.inf
        self.stale = 0  # epochs since the last improvement

    def update(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True when it is the lowest so far."""
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.stale = val_loss, 0
        else:
            self.stale += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": self.best_val_loss, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val_loss = float(state["best_val_loss"])
        self.stale = int(state["stale"])


class BestKeeper:
    """Remembers the epoch with the lowest validation loss: the one whose weights a fold keeps."""

    def __init__(self) -> None:
        self.best_val_loss = math.inf
        self.best_epoch = 0  # 0: no epoch yet

    def update(self, val_loss: float, epoch: int) -> bool:
        """Record one epoch; True when it is the new best (its weights should be saved)."""
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, epoch
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val_loss = float(state["best_val_loss"])
        self.best_epoch = int(state["best_epoch"])
