"""A run folder: everything one ``facekit train`` leaves behind, and the one way to read it.

Layout (docs/runs.md describes each file)::

    RUN/config.json          the training configuration and versions
    RUN/classes.json         class names; the index is the class id
    RUN/split.json           files, labels, test indices, per-fold train/val indices
    RUN/normalization.json   per-fold mean/std and where they came from
    RUN/history.json         one row per fold and epoch
    RUN/folds.json           per-fold best validation figures, their mean/std, the kept fold
    RUN/predictions.npz      test split: index, y_true, y_pred, probs (N x C)
    RUN/predictions.csv      the same, readable: file, true and predicted class, confidence
    RUN/checkpoints/fold-K-last.pt, fold-K-best.pt, best.pt (the kept model)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from facekit.errors import FacekitError, UsageError

RUNS_DIR = Path("runs")
CHECKPOINTS = "checkpoints"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a run folder is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file and a rename."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a facekit checkpoint with ``weights_only=True`` (no pickled code runs)."""
    import torch

    if not path.is_file():
        raise FacekitError(f"checkpoint {path} not found: was the run interrupted before epoch 1?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise FacekitError(f"checkpoint {path} could not be read ({exc.__class__.__name__}): {exc}") from exc


@dataclass
class Run:
    """A finished or interrupted run folder, read lazily."""

    path: Path

    @classmethod
    def open(cls, path: str | Path | None = None, runs_dir: Path = RUNS_DIR) -> "Run":
        """Open ``path``, or the latest run under ``runs_dir`` when ``path`` is None."""
        if path is None:
            return cls(latest_run(runs_dir))
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UsageError(f"{path} is not a facekit run (no config.json): pass a folder made by `facekit train`")
        return cls(path)

    def _json(self, name: str, default: Any = None) -> Any:
        file = self.path / name
        if not file.is_file():
            if default is not None:
                return default
            raise FacekitError(f"{file} is missing: the run did not finish (try `facekit train --resume {self.path}`)")
        return json.loads(file.read_text())

    @cached_property
    def config(self) -> dict[str, Any]:
        return self._json("config.json")

    @cached_property
    def classes(self) -> list[str]:
        return self._json("classes.json")

    @cached_property
    def split(self) -> dict[str, Any]:
        return self._json("split.json")

    @cached_property
    def history(self) -> list[dict[str, Any]]:
        return self._json("history.json", default=[])

    @cached_property
    def folds(self) -> dict[str, Any]:
        return self._json("folds.json", default={})

    @cached_property
    def normalization(self) -> dict[str, Any]:
        return self._json("normalization.json")

    @property
    def has_predictions(self) -> bool:
        return (self.path / "predictions.npz").is_file()

    def predictions(self) -> dict[str, np.ndarray]:
        """Test predictions: ``index``, ``y_true``, ``y_pred``, ``probs`` (N x C)."""
        file = self.path / "predictions.npz"
        if not file.is_file():
            raise FacekitError(f"{file} is missing: the run has no test predictions yet (did training finish?)")
        with np.load(file) as data:
            return {key: data[key] for key in data.files}

    def test_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """``y_true`` and ``y_pred`` alone: reports never read ``probs`` (N x C, gigabytes at 50k classes)."""
        if not self.has_predictions:
            self.predictions()  # raises the missing-file error
        with np.load(self.path / "predictions.npz") as data:  # an npz reads each array on access only
            return data["y_true"], data["y_pred"]

    def train_counts(self, fold: int | None = None) -> np.ndarray:
        """Training images per class for ``fold`` (default: the kept fold)."""
        fold = self.kept_fold if fold is None else fold
        labels = np.asarray(self.split["labels"])
        train = np.asarray(self.split["folds"][fold]["train"], dtype=int)
        return np.bincount(labels[train], minlength=len(self.classes))

    @property
    def kept_fold(self) -> int:
        return int(self.folds.get("kept", 0))

    def checkpoint_path(self, which: str = "best") -> Path:
        return self.path / CHECKPOINTS / f"{which}.pt"

    def load_model(self, which: str = "best"):
        """Rebuild the run's architecture from the registry and load the checkpoint's weights."""
        from facekit.api import ArchOptions
        from facekit.plugins import architectures

        checkpoint = load_checkpoint(self.checkpoint_path(which))
        config = self.config
        spec = architectures().get(config["arch"])
        options = ArchOptions(
            num_classes=len(self.classes),
            input_size=int(config["input_size"]),
            finetune=bool(config.get("finetune", False)),
            pretrained=False,  # the checkpoint holds every weight; no need to fetch the originals
        )
        model = spec.build(options)
        model.load_state_dict(checkpoint["model"])
        model.eval()
        return model


def latest_run(runs_dir: Path = RUNS_DIR) -> Path:
    """The most recently created run folder under ``runs_dir``."""
    runs = [p for p in Path(runs_dir).glob("*/config.json")] if Path(runs_dir).is_dir() else []
    if not runs:
        raise UsageError(f"no runs found under {runs_dir}/: train one with `facekit train --data DIR` or pass RUN")
    return max(runs, key=lambda p: p.stat().st_mtime).parent
