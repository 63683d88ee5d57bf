"""A run folder: everything one ``facekit train`` leaves behind; the one module that writes and reads it.

Layout (docs/train.md, "The run folder", describes each file)::

    RUN/config.json          the training configuration and versions
    RUN/classes.json         class names; the index is the class id
    RUN/split.json           files, labels, test indices, per-fold train/val indices
    RUN/normalization.json   per-fold mean/std and where they came from
    RUN/history.json         one row per fold and epoch
    RUN/folds.json           per-fold best validation figures, their mean/std, the kept fold
    RUN/predictions.npz      test split: index, y_true, y_pred, probs (N x C)
    RUN/predictions.csv      the same, readable: file, true and predicted class, confidence
    RUN/checkpoints/fold-K-last.pt, fold-K-best.pt, best.pt (the kept model)

:class:`RunWriter` writes a run (only rank 0 of a job holds one), :class:`Run` reads it;
every file goes through :func:`facekit.files.atomic_write`, so an interruption never leaves
half a file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Sequence

import numpy as np

from facekit.errors import FacekitError, UsageError
from facekit.files import atomic_write, write_json

if TYPE_CHECKING:
    from torch import nn

    from facekit.api import SplitPlan
    from facekit.engine import TrainConfig

RUNS_DIR = Path("runs")
CHECKPOINTS = "checkpoints"

# Kept under its former name for modules that still import it from here.
atomic_write_bytes = atomic_write


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` written atomically (a temporary file, then a rename)."""
    import torch

    atomic_write(path, lambda handle: torch.save(payload, handle))


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
class FoldState:
    """Everything needed to continue a fold where it stopped: one ``checkpoints/fold-K-*.pt``.

    ``best`` and ``early_stopping`` are the state dicts of :class:`facekit.callbacks.BestKeeper`
    and :class:`facekit.callbacks.EarlyStopping`. ``fold_done`` marks a finished fold, which a
    resume skips.
    """

    model: dict[str, Any]
    optimizer: dict[str, Any]
    epoch: int
    fold: int
    rng: dict[str, Any]
    config: dict[str, Any]
    classes: list[str]
    history: list[dict[str, Any]]
    fold_results: list[dict[str, Any]]
    best: dict[str, Any]
    early_stopping: dict[str, Any]
    fold_done: bool = False
    schedule: dict[str, Any] | None = None  # facekit.schedules.Schedule.state_dict(); None in older checkpoints

    @property
    def next_fold(self) -> int:
        """The fold a resume continues: this one, or the next when this one is done."""
        return self.fold + 1 if self.fold_done else self.fold

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's flat dictionary, in types ``torch.load(weights_only=True)`` accepts.

        The layout is the one checkpoints have always had, so older runs still resume; both
        callbacks track the same lowest validation loss, which is stored once.
        """
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "epoch": self.epoch,
            "fold": self.fold,
            "rng": self.rng,
            "config": self.config,
            "classes": self.classes,
            "history": self.history,
            "fold_results": self.fold_results,
            "best_val_loss": self.best["best_val_loss"],
            "best_epoch": self.best["best_epoch"],
            "stale": self.early_stopping["stale"],
            "fold_done": self.fold_done,
            "schedule": self.schedule,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FoldState":
        best_val_loss = float(data["best_val_loss"])
        return cls(
            model=data["model"],
            optimizer=data["optimizer"],
            epoch=int(data["epoch"]),
            fold=int(data["fold"]),
            rng=data["rng"],
            config=data["config"],
            classes=list(data["classes"]),
            history=list(data["history"]),
            fold_results=list(data["fold_results"]),
            best={"best_val_loss": best_val_loss, "best_epoch": int(data["best_epoch"])},
            early_stopping={"best_val_loss": best_val_loss, "stale": int(data["stale"])},
            fold_done=bool(data.get("fold_done", False)),
            schedule=data.get("schedule"),
        )


def default_run_dir(config: "TrainConfig") -> Path:
    """``runs/<date>-<time>-<arch>-<loss>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RUNS_DIR / f"{stamp}-{config.arch}-{config.loss}"


class RunWriter:
    """The one writer of a run folder: its setup, history, checkpoints, kept fold and predictions."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS

    @classmethod
    def create(cls, path: Path, force: bool) -> "RunWriter":
        """A new, empty run folder; never overwrites a run silently (an existing non-empty folder needs ``force``)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} exists and is not a folder")
        if path.is_dir() and any(path.iterdir()):
            if not force:
                raise UsageError(
                    f"run folder {path} already exists: choose another --out, continue it with "
                    f"`facekit train --resume {path}`, or pass --force to replace it"
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def write_setup(
        self,
        *,
        config: dict[str, Any],
        classes: Sequence[str],
        root: Path,
        files: Sequence[str],
        labels: np.ndarray,
        strategy: str,
        plan: "SplitPlan",
        normalization: dict[str, Any],
    ) -> None:
        """What the run was asked to do: config (with versions), classes, split and normalization."""
        import torch

        import facekit

        config = config | {
            "facekit_version": facekit.__version__,
            "torch_version": torch.__version__,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
        }
        split = {
            "strategy": strategy,
            "root": str(Path(root).resolve()),
            "files": list(files),
            "labels": [int(v) for v in labels],
            "test": [int(v) for v in plan.test],
            "folds": [{"train": [int(v) for v in f.train], "val": [int(v) for v in f.val]} for f in plan.folds],
            "notes": list(plan.notes),
        }
        write_json(self.path / "config.json", config)
        write_json(self.path / "classes.json", list(classes))
        write_json(self.path / "split.json", split)
        write_json(self.path / "normalization.json", normalization)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        write_json(self.path / "history.json", history)

    def save_fold_state(self, state: FoldState, *, best: bool) -> None:
        """Checkpoint an epoch as the fold's last (and as its best when ``best``)."""
        payload = state.to_dict()
        if best:
            save_checkpoint(self.checkpoints / f"fold-{state.fold}-best.pt", payload)
        save_checkpoint(self.checkpoints / f"fold-{state.fold}-last.pt", payload)

    def mark_fold_done(self, state: FoldState, fold_results: list[dict[str, Any]], history: list[dict[str, Any]]) -> None:
        """Save the fold's last state as finished, with its result, so a resume starts the next fold."""
        done = dataclasses.replace(state, fold_done=True, fold_results=list(fold_results), history=list(history))
        save_checkpoint(self.checkpoints / f"fold-{state.fold}-last.pt", done.to_dict())

    def keep_best_fold(self, fold_results: list[dict[str, Any]]) -> int:
        """Keep the fold with the lowest validation loss: folds.json, and its best checkpoint as best.pt."""
        val_losses = np.array([r["val_loss"] for r in fold_results])
        val_accs = np.array([r["val_acc"] for r in fold_results])
        kept = int(fold_results[int(np.argmin(val_losses))]["fold"])
        write_json(
            self.path / "folds.json",
            {
                "kept": kept,
                "folds": fold_results,
                "val_loss_mean": float(val_losses.mean()),
                "val_loss_std": float(val_losses.std()),
                "val_acc_mean": float(val_accs.mean()),
                "val_acc_std": float(val_accs.std()),
            },
        )
        atomic_write(self.checkpoints / "best.pt", _copy_of(self.checkpoints / f"fold-{kept}-best.pt"))
        return kept

    def write_predictions(
        self, index: np.ndarray, y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], files: Sequence[str]
    ) -> None:
        """The kept model's test predictions: ``predictions.npz`` and a readable ``predictions.csv``."""
        y_pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, index=index, y_true=y_true, y_pred=y_pred, probs=probs.astype(np.float32))
        atomic_write(self.path / "predictions.npz", buffer.getvalue())
        lines = ["file,true_id,true_name,pred_id,pred_name,confidence"]
        for i, t, p, row in zip(index, y_true, y_pred, probs):
            lines.append(f"{_csv(files[i])},{t},{_csv(classes[t])},{p},{_csv(classes[p])},{row[p]:.4f}")
        atomic_write(self.path / "predictions.csv", ("\n".join(lines) + "\n").encode())


def _copy_of(source: Path) -> Callable[[BinaryIO], None]:
    """A writer for :func:`atomic_write` that copies ``source`` without reading it whole into memory."""

    def write(handle: BinaryIO) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, handle)

    return write


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


_SETUP = ("config", "classes", "split", "normalization")  # the files written before training starts


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

    def setup(self) -> dict[str, Any]:
        """What :meth:`with_setup` needs to stand in for this run where its folder is not at hand."""
        return {name: getattr(self, name) for name in _SETUP}

    @classmethod
    def with_setup(cls, path: str | Path, setup: dict[str, Any]) -> "Run":
        """A run whose setup files come from ``setup`` (rank 0's :meth:`setup`), not from ``path``.

        The other ranks of a data-parallel job use it: they need no shared file system.
        """
        run = cls(Path(path))
        run.__dict__.update({name: setup[name] for name in _SETUP})  # fills the cached properties
        return run

    def load_model(self, which: str = "best", *, device: Any = None, channels_last: bool = False) -> "nn.Module":
        """Rebuild the run's architecture from the registry and load the checkpoint's weights (eval mode)."""
        weights = load_checkpoint(self.checkpoint_path(which))["model"]
        return self.model_with(weights, device=device, channels_last=channels_last)

    def model_with(self, weights: dict[str, Any], *, device: Any = None, channels_last: bool = False) -> "nn.Module":
        """The run's architecture, rebuilt from the registry, with ``weights`` (a state dict) in eval mode."""
        from facekit.factory import create_model

        config = self.config
        model = create_model(
            config["arch"],
            num_classes=len(self.classes),
            input_size=int(config["input_size"]),
            finetune=bool(config.get("finetune", False)),
            pretrained=False,  # the checkpoint holds every weight; no need to fetch the originals
            device=device,
            channels_last=channels_last,
        )
        model.load_state_dict(weights)
        model.eval()
        return model

    def latest_state(self) -> FoldState | None:
        """The newest fold's last checkpoint, or None if the run never finished an epoch."""
        checkpoints = sorted((self.path / CHECKPOINTS).glob("fold-*-last.pt"), key=lambda p: int(p.name.split("-")[1]))
        return FoldState.from_dict(load_checkpoint(checkpoints[-1])) if checkpoints else None


def latest_run(runs_dir: Path = RUNS_DIR) -> Path:
    """The most recently created run folder under ``runs_dir``."""
    runs = [p for p in Path(runs_dir).glob("*/config.json")] if Path(runs_dir).is_dir() else []
    if not runs:
        raise UsageError(f"no runs found under {runs_dir}/: train one with `facekit train --data DIR` or pass RUN")
    return max(runs, key=lambda p: p.stat().st_mtime).parent
