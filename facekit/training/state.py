"""The named state of a run while it trains: what its folds share, and one fold in training.

The engine's fold loop passes these instead of a dozen positional values; a checkpoint
(:class:`facekit.runs.FoldState`) is written from them after every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facekit.callbacks import BestKeeper, EarlyStopping
from facekit.runs import FoldState, Run, RunWriter
from facekit.schedules import Schedule
from facekit.specs import Normalization


@dataclass
class RunRecord:
    """What the folds of a run share, and every checkpoint carries: its data and its record so far."""

    files: list[str]  # absolute paths, in split.json's order
    labels: np.ndarray
    classes: list[str]
    folds: list[dict[str, Any]]  # split.json's per-fold "train" and "val" indices
    normalizations: list[Normalization]  # one per fold
    history: list[dict[str, Any]]  # one row per fold and epoch
    fold_results: list[dict[str, Any]]  # one per finished fold
    writer: RunWriter | None  # rank 0's; None on the other ranks

    @classmethod
    def of(cls, run: Run, resume_state: FoldState | None, writer: RunWriter | None) -> "RunRecord":
        """The record of ``run`` as its setup files say, continued from ``resume_state`` when resuming."""
        split = run.split
        return cls(
            files=[str(Path(split["root"]) / f) for f in split["files"]],
            labels=np.asarray(split["labels"], dtype=np.int64),
            classes=run.classes,
            folds=split["folds"],
            normalizations=[Normalization.from_dict(n) for n in run.normalization["folds"]],
            history=list(resume_state.history) if resume_state else [],
            fold_results=list(resume_state.fold_results) if resume_state else [],
            writer=writer,
        )

    def val_acc(self, fold: int, epoch: int) -> float:
        """The validation accuracy of ``fold`` at ``epoch``, as history.json records it (NaN when absent)."""
        for row in self.history:
            if row["fold"] == fold and row["epoch"] == epoch:
                return float(row["val_acc"])
        return float("nan")


@dataclass
class FoldTraining:
    """One fold while it trains: its model and optimizer, its loaders, and where it stands."""

    index: int
    model: nn.Module  # the bare model: evaluation and checkpoints
    trained: nn.Module  # the model that trains: itself, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    loss_fn: nn.Module
    val_loss_fn: nn.Module
    train_loader: Any
    val_loader: Any | None  # None: no validation images (--val-size 0)
    best: BestKeeper
    early_stopping: EarlyStopping
    start_epoch: int = 1
    last_state: FoldState | None = None  # the last epoch's checkpoint
    diverged_epoch: int | None = None

    @property
    def validated(self) -> bool:
        return self.val_loader is not None

    def close(self) -> None:
        self.train_loader.close()
        if self.val_loader is not None:
            self.val_loader.close()
