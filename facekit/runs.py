"""A run folder: everything one ``facekit train`` leaves behind; the one module that writes and reads it.

Layout (docs/train.md, "The run folder", describes each file)::

    RUN/config.json          the training configuration and versions
    RUN/classes.json         class names; the index is the class id
    RUN/split.json           files, labels, test indices, per-fold train/val indices
    RUN/normalization.json   per-fold mean/std and where they came from
    RUN/history.json         one row per fold and epoch
    RUN/folds.json           per-fold best validation figures, their mean/std, the kept fold
    RUN/predictions.npz      test split: index, y_true, y_pred, top_ids/top_probs (N x k), probs (N x C) while small
    RUN/predictions.csv      the same, readable: file, true and predicted class, confidence
    RUN/openset.json         open-set runs: the score rejected by, calibrated thresholds
    RUN/gallery.npz          open-set runs: class centroids and enrolled people's embeddings
    RUN/openset_test.npz     open-set runs: the test split's scores, for facekit report
    RUN/checkpoints/fold-K-last.pt, fold-K-best.pt, best.pt (the kept model)
    RUN/.lock                held by the process that trains the run

:class:`RunWriter` writes a run (only rank 0 of a job holds one), :class:`Run` reads it;
every file goes through :func:`facekit.files.atomic_write`, so an interruption never leaves
half a file. A writer made by :meth:`RunWriter.create`, :meth:`RunWriter.create_new` or
:meth:`RunWriter.open` holds an exclusive lock on the folder until it is closed or its process
dies, so two trainings never write into one folder.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import io
import json
import math
import os
import shutil
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Sequence

import numpy as np

from facekit.errors import FacekitError, UsageError
from facekit.files import (
    atomic_write,
    data_overlap,
    describe_contents,
    os_error_line,
    protected_reason,
    remove_stale_temporaries,
    interrupted_write,
    write_failure,
    write_json,
)
from facekit.locks import lock_folder
from facekit.run_files import LOCK_FILE, SETUP_FILES, is_run_folder

if TYPE_CHECKING:
    from torch import nn

    from facekit.specs import SplitPlan
    from facekit.config import TrainConfig

RUNS_DIR = Path("runs")
CHECKPOINTS = "checkpoints"
PREDICTION_KEYS = ("index", "y_true", "y_pred")  # always in predictions.npz, with TOP_KEYS and maybe "probs"
TOP_KEYS = ("top_ids", "top_probs")
# Classes kept per test image, most probable first: enough for top-5 figures and a look at the runners-up.
TOP_K = 10
# The N x C probabilities are kept (in memory during evaluation, and in predictions.npz) only up to this
# many floats (64 MB): every run of up to ~4k test images x 4k classes keeps them as it always did, while
# 100k images x 50k classes (20 GB) keep top_ids/top_probs alone, memory proportional to N * TOP_K.
DENSE_PROBS_LIMIT = 2**24
RESULT_FILES = ("predictions.npz", f"{CHECKPOINTS}/best.pt")  # what a finished run has

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
        from facekit.weights import describe_load_failure

        raise FacekitError(f"checkpoint {path} could not be read ({describe_load_failure(exc)})") from exc


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
    """``runs/<date>-<time>-<arch>-<loss>``; :meth:`RunWriter.create_new` adds a suffix if it is taken."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RUNS_DIR / f"{stamp}-{config.arch}-{config.loss}"


def _contents(path: Path) -> list[Path]:
    """What a folder holds besides a run lock (a lock alone is left by a start that failed)."""
    return [p for p in path.iterdir() if p.name != LOCK_FILE] if path.is_dir() else []


def check_destination(path: Path, *, force: bool, data: Path | None = None, default: bool = False) -> None:
    """Refuse an ``--out`` that would lose something, before any work is done.

    Never a folder inside, equal to or holding the data (``data``); and (unless ``default``, the
    ``runs/...`` name :meth:`RunWriter.create_new` makes free by a suffix) an existing non-empty
    folder only with ``force``, and only when it is recognisably a run (:func:`is_run_folder`),
    never the root, the home folder or a folder that holds the current one.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} exists and is not a folder")
    overlap = None if data is None else data_overlap(path, [data])
    if overlap is not None and default:
        raise UsageError(
            f"the run folder {path} would be inside the data folder {data} (training from inside it?): "
            "pass an --out outside the data folder"
        )
    if overlap is not None:
        raise UsageError(
            f"--out {path}: {overlap} (--data {data}); a run folder there would mix with the images, "
            "so nothing was deleted or written: choose an --out outside the data folder"
        )
    if default:
        return
    try:
        contents = _contents(path)
    except OSError as exc:
        raise UsageError(f"--out {path} cannot be read ({exc.strerror or exc}): choose another --out") from None
    if not contents:
        return
    reason = protected_reason(path)
    recognised = reason is None and is_run_folder(path)
    if reason is None and not recognised:
        reason = f"{path} is not a facekit run folder (it holds {describe_contents(path)})"
    if not force:
        if (path / LOCK_FILE).is_file():
            os.close(lock_folder(path))  # a folder in use says by whom, rather than suggest --resume or --force
        if recognised:
            raise _exists(path)
        raise UsageError(f"--out {path} already exists and {reason.removeprefix(str(path) + ' ')}: choose another --out")
    if not recognised:
        raise UsageError(
            f"--out {path}: {reason}; --force replaces only a run folder made by `facekit train`, so nothing was "
            "deleted: choose another --out"
        )


def _guarded(method: Callable) -> Callable:
    """Turn a failed write of the run folder (full disk, read-only folder) into one line that says how to continue."""

    @functools.wraps(method)
    def wrapper(self: "RunWriter", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (OSError, RuntimeError) as exc:
            if interrupted_write(exc):
                raise KeyboardInterrupt from None  # the engine names the run to resume
            cause = write_failure(exc)
            if cause is None:
                raise
            # config.json is the setup's last file: without it there is no run to continue yet.
            then = (
                f"then continue with `facekit train --resume {self.path}` (the files written before are intact)"
                if (self.path / "config.json").is_file()
                else "then train again"
            )
            where = cause.filename or self.path
            raise FacekitError(f"could not write the run folder: {os_error_line(cause, where)}, {then}") from exc

    return wrapper


class RunWriter:
    """The one writer of a run folder: its setup, history, checkpoints, kept fold and predictions.

    Use it as a context manager: leaving it releases the folder's lock.
    """

    def __init__(self, path: Path, lock: int | None = None):
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS
        self._lock_fd = lock

    @classmethod
    def create(cls, path: Path, force: bool, data: Path | None = None) -> "RunWriter":
        """A new, empty run folder, locked; never overwrites a run silently (an existing non-empty folder needs ``force``).

        ``force`` empties only a folder that is recognisably a run, never one that is, holds or lies
        in the data folder ``data`` (see :func:`check_destination`). A folder another process is
        training in is refused, even with ``force``.
        """
        path = Path(path)
        check_destination(path, force=force, data=data)
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = lock_folder(path)
        except OSError as exc:
            raise FacekitError(f"cannot make the run folder: {os_error_line(exc, path)}") from None
        # Checked again under the lock: another process may have filled the folder in between.
        try:
            check_destination(path, force=force, data=data)
        except UsageError:
            os.close(lock)
            raise
        for item in _contents(path):
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        return cls(path, lock)

    @classmethod
    def for_config(cls, config: "TrainConfig") -> "RunWriter":
        """The new run's folder: ``--out`` (replaced only with ``--force``), else a fresh default name."""
        if config.out is not None:
            return cls.create(config.out, config.force, data=config.data)
        return cls.create_new(default_run_dir(config), data=config.data)

    @classmethod
    def create_new(cls, path: Path, data: Path | None = None) -> "RunWriter":
        """A new run folder at ``path``, or at ``path-2``, ``path-3``... when that name is taken (default names).

        Never inside the data folder ``data`` (its files would become part of the data set).
        """
        path = Path(path)
        if data is not None and data_overlap(path, [data]) is not None:
            raise UsageError(
                f"the run folder {path} would be inside the data folder {data} (training from inside it?): "
                "pass an --out outside the data folder"
            )
        for attempt in range(1, 1000):
            candidate = path if attempt == 1 else path.with_name(f"{path.name}-{attempt}")
            try:
                candidate.mkdir(parents=True)  # atomic: of two processes, one gets the name
            except FileExistsError:
                continue
            except OSError as exc:
                raise FacekitError(f"cannot make the run folder: {os_error_line(exc, candidate)}") from None
            return cls(candidate, lock_folder(candidate))
        raise FacekitError(f"no free run folder name like {path}: pass --out")

    @classmethod
    def open(cls, path: Path) -> "RunWriter":
        """An existing run folder, locked, with the temporary files of a killed writer removed (resume)."""
        path = Path(path)
        try:
            lock = lock_folder(path)
        except OSError as exc:
            raise FacekitError(
                f"cannot resume the run: {os_error_line(exc, path)} (copy the run there and resume the copy)"
            ) from None
        for folder in (path, path / CHECKPOINTS):
            remove_stale_temporaries(folder)  # nobody else writes here: we hold the lock
        return cls(path, lock)

    def close(self) -> None:
        """Release the folder's lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def discard(self) -> None:
        """Remove what a setup that could not be written left: no half-made run stays behind.

        Only the setup's own files go, then the folder if that left it empty: nothing else is deleted.
        """
        for name in SETUP_FILES:
            (self.path / name).unlink(missing_ok=True)
        remove_stale_temporaries(self.path)
        self.close()
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            pass  # not empty (or gone): left as it is

    @_guarded
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
        openset: dict[str, Any] | None = None,
        fingerprints: dict[str, Any] | None = None,
    ) -> None:
        """What the run was asked to do: config (with versions), classes, split and normalization.

        ``openset``: the unknown people's images (facekit.openset_training), kept in split.json."""
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
        if openset is not None:
            split["openset"] = openset
        write_json(self.path / "classes.json", list(classes))
        write_json(self.path / "split.json", split)
        write_json(self.path / "normalization.json", normalization)
        if fingerprints is not None:  # facekit.data.fingerprints: what a resume checks the images against
            write_json(self.path / "fingerprints.json", fingerprints)
        write_json(self.path / "config.json", config)  # last: a folder with config.json has its whole setup

    @_guarded
    def update_config(self, changes: dict[str, Any]) -> None:
        """Record settings a resume changed (e.g. more epochs), so a later resume keeps them."""
        write_json(self.path / "config.json", Run(self.path).config | changes)

    @_guarded
    def write_history(self, history: list[dict[str, Any]]) -> None:
        write_json(self.path / "history.json", history)

    @_guarded
    def save_fold_state(self, state: FoldState, *, best: bool) -> None:
        """Checkpoint an epoch as the fold's last (and as its best when ``best``)."""
        payload = state.to_dict()
        if best:
            save_checkpoint(self.checkpoints / f"fold-{state.fold}-best.pt", payload)
        save_checkpoint(self.checkpoints / f"fold-{state.fold}-last.pt", payload)

    @_guarded
    def mark_fold_done(self, state: FoldState, fold_results: list[dict[str, Any]], history: list[dict[str, Any]]) -> None:
        """Save the fold's last state as finished, with its result, so a resume starts the next fold.

        Then drop the checkpoints nothing needs any more: a resume needs only the newest fold's
        last checkpoint, and the kept model is the best checkpoint of the best fold so far.
        """
        done = dataclasses.replace(state, fold_done=True, fold_results=list(fold_results), history=list(history))
        save_checkpoint(self.checkpoints / f"fold-{state.fold}-last.pt", done.to_dict())
        best_fold = _best_fold(fold_results)
        for result in fold_results:
            fold = int(result["fold"])
            if fold != best_fold:
                (self.checkpoints / f"fold-{fold}-best.pt").unlink(missing_ok=True)
            if fold != state.fold:
                (self.checkpoints / f"fold-{fold}-last.pt").unlink(missing_ok=True)

    @_guarded
    def keep_best_fold(self, fold_results: list[dict[str, Any]]) -> int:
        """Keep the fold with the lowest validation loss: folds.json, and its best checkpoint as best.pt."""
        val_losses = np.array([r["val_loss"] for r in fold_results])
        val_accs = np.array([r["val_acc"] for r in fold_results])
        kept = _best_fold(fold_results)
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

    @_guarded
    def write_openset(self, settings: dict[str, Any], gallery: bytes | None, test_scores: bytes) -> None:
        """The open-set files (docs/train.md): openset.json, gallery.npz (when the run has embeddings), openset_test.npz."""
        if gallery is not None:
            self.write_gallery(gallery)
        atomic_write(self.path / "openset_test.npz", test_scores)
        write_json(self.path / "openset.json", settings)  # last: its presence means the others are complete

    @_guarded
    def write_gallery(self, gallery: bytes) -> None:
        """gallery.npz: class centroids and enrolled people (facekit.openset.Gallery)."""
        atomic_write(self.path / "gallery.npz", gallery)

    @_guarded
    def write_predictions(
        self, index: np.ndarray, y_true: np.ndarray, scores: TestScores, classes: Sequence[str], files: Sequence[str]
    ) -> None:
        """The kept model's test predictions: ``predictions.npz`` and a readable ``predictions.csv``."""
        arrays = {"top_ids": scores.top_ids, "top_probs": scores.top_probs.astype(np.float32)}
        if scores.probs is not None:
            arrays["probs"] = scores.probs.astype(np.float32)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, index=index, y_true=y_true, y_pred=scores.y_pred, **arrays)
        atomic_write(self.path / "predictions.npz", buffer.getvalue())
        lines = ["file,true_id,true_name,pred_id,pred_name,confidence"]
        for i, t, p, confidence in zip(index, y_true, scores.y_pred, scores.top_probs[:, 0] if len(index) else []):
            lines.append(f"{_csv(files[i])},{t},{_csv(classes[t])},{p},{_csv(classes[p])},{confidence:.4f}")
        atomic_write(self.path / "predictions.csv", ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class TestScores:
    """What evaluation keeps of the model's softmax over the test images, row ``i`` for image ``i``.

    ``y_pred`` is the argmax; ``top_ids``/``top_probs`` (N x k, k = min(C, TOP_K)) the k most
    probable classes and their probabilities, descending; ``probs`` the whole N x C softmax, or
    None where N * C exceeds :data:`DENSE_PROBS_LIMIT`.
    """

    __test__ = False  # not a pytest test class, despite its name

    y_pred: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    probs: np.ndarray | None


def _normalization_problem(folds: Any) -> str | None:
    """What is wrong with normalization.json's ``folds``, or None."""
    if not isinstance(folds, list) or not folds:
        return "no fold's statistics"
    for k, fold in enumerate(folds):
        if not isinstance(fold, dict):
            return f"fold {k} is not a mean and std"
        for key in ("mean", "std"):
            values = fold.get(key)
            numbers = isinstance(values, list) and len(values) == 3
            numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if not numbers or not all(math.isfinite(v) for v in values):
                return f"fold {k}'s {key} is not 3 finite numbers: {json.dumps(values)[:60]}"
            if key == "std" and min(values) <= 0:
                return f"fold {k}'s std has a value that is not above 0: {json.dumps(values)[:60]}"
    return None


def _best_fold(fold_results: list[dict[str, Any]]) -> int:
    """The fold with the lowest validation loss (the first one when none was validated)."""
    val_losses = np.array([r["val_loss"] for r in fold_results], dtype=float)
    return int(fold_results[int(np.argmin(np.where(np.isnan(val_losses), np.inf, val_losses)))]["fold"])


def _exists(path: Path) -> UsageError:
    return UsageError(
        f"run folder {path} already exists: choose another --out, continue it with "
        f"`facekit train --resume {path}`, or pass --force to replace it"
    )


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

    def _json(self, name: str, default: Any = None, kind: type = dict, keys: Sequence[str] = ()) -> Any:
        """A run file's JSON: a ``kind`` with ``keys``; a damaged file is one line naming it, never a traceback."""
        file = self.path / name
        if not file.is_file():
            if default is not None:
                return default
            raise FacekitError(f"{file} is missing: the run did not finish (try `facekit train --resume {self.path}`)")
        try:
            data = json.loads(file.read_text())
        except (ValueError, OSError) as exc:  # truncated, not JSON, or unreadable
            raise FacekitError(f"{file} is damaged ({exc.__class__.__name__}: {exc}): this run cannot be read") from None
        missing = [key for key in keys if key not in data] if isinstance(data, kind) else [f"a {kind.__name__}"]
        if missing:
            raise FacekitError(f"{file} is damaged (it lacks {missing[0]}): this run cannot be read")
        return data

    @cached_property
    def config(self) -> dict[str, Any]:
        return self._json("config.json")

    @cached_property
    def classes(self) -> list[str]:
        return self._json("classes.json", kind=list)

    @cached_property
    def split(self) -> dict[str, Any]:
        return self._json("split.json", keys=("root", "files", "labels", "test", "folds"))

    @cached_property
    def history(self) -> list[dict[str, Any]]:
        return self._json("history.json", default=[], kind=list)

    @cached_property
    def folds(self) -> dict[str, Any]:
        return self._json("folds.json", default={})

    @cached_property
    def normalization(self) -> dict[str, Any]:
        """normalization.json, checked: every fold's mean and std are 3 finite numbers, each std above 0
        (a NaN there would turn every prediction into NaN)."""
        data = self._json("normalization.json", keys=("folds",))
        problem = _normalization_problem(data["folds"])
        if problem:
            raise FacekitError(
                f"{self.path / 'normalization.json'} is damaged ({problem}): this run cannot be used; "
                "restore the file from a copy of the run, or train a new run"
            )
        return data

    def fold_normalization(self, fold: int | None = None) -> dict[str, Any]:
        """The mean and std of ``fold`` (default: the kept fold), checked."""
        folds = self.normalization["folds"]
        fold = self.kept_fold if fold is None else fold
        if not 0 <= fold < len(folds):
            raise FacekitError(f"{self.path / 'normalization.json'} has no fold {fold}: this run cannot be used")
        return folds[fold]

    @cached_property
    def fingerprints(self) -> dict[str, Any] | None:
        """fingerprints.json (facekit.data.fingerprints), or None for a run made before it existed."""
        if not (self.path / "fingerprints.json").is_file():
            return None
        return self._json("fingerprints.json", keys=("files",))

    @property
    def has_predictions(self) -> bool:
        return (self.path / "predictions.npz").is_file()

    def predictions(self) -> dict[str, np.ndarray]:
        """Test predictions: ``index``, ``y_true``, ``y_pred`` (N), ``top_ids`` and ``top_probs`` (N x k:
        the k = min(C, 10) most probable classes, descending), and ``probs`` (N x C) only where the run
        kept it: runs of N * C above :data:`DENSE_PROBS_LIMIT` have none. Runs written before
        ``top_ids``/``top_probs`` existed have ``probs`` alone."""
        file = self.path / "predictions.npz"
        if not file.is_file():
            raise self.no_results(file)
        return self._checked_predictions(file, with_probs=True)

    def test_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """``y_true`` and ``y_pred`` alone, checked as :meth:`predictions` checks them: reports never
        need ``probs`` (N x C), which is checked a block at a time instead."""
        file = self.path / "predictions.npz"
        if not file.is_file():
            raise self.no_results(file)
        predictions = self._checked_predictions(file, with_probs=False)
        return predictions["y_true"], predictions["y_pred"]

    def _checked_predictions(self, file: Path, *, with_probs: bool) -> dict[str, np.ndarray]:
        try:
            with open(file, "rb") as handle, np.load(handle, allow_pickle=False) as data:
                stored = set(data.files)
                tops = stored & set(TOP_KEYS)
                if len(tops) == 1:
                    raise KeyError(f"{tops.pop()} is stored without {(set(TOP_KEYS) - stored).pop()}")
                if not tops and "probs" not in stored:
                    raise KeyError("neither probs nor top_ids and top_probs are stored")
                predictions = {key: data[key] for key in (*PREDICTION_KEYS, *TOP_KEYS) if key in stored}
                probs = None
                if "probs" in stored and with_probs:
                    predictions["probs"] = data["probs"]
                    probs = _ProbsSummary.of(predictions["probs"])
                elif "probs" in stored:
                    probs = _ProbsSummary.read(data)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise self._damaged(file, f"{exc.__class__.__name__}: {exc}") from None
        problem = _prediction_problem(predictions, probs, len(self.classes))
        if problem:
            raise self._damaged(file, problem)
        return predictions

    def no_results(self, missing: Path) -> FacekitError:
        """The error for a run that has not finished: ``missing``, its kept model or test predictions, is not there yet."""
        return FacekitError(
            f"{missing} is missing: run {self.path} has no results yet (its training did not finish); "
            f"continue it with `facekit train --resume {self.path}`"
        )

    def _damaged(self, file: Path, problem: str) -> FacekitError:
        return FacekitError(
            f"{file} is damaged ({problem}): write it again with `facekit train --resume {self.path}` "
            "(it re-evaluates the kept model)"
        )

    def train_counts(self, fold: int | None = None) -> np.ndarray:
        """Training images per class for ``fold`` (default: the kept fold)."""
        fold = self.kept_fold if fold is None else fold
        labels = np.asarray(self.split["labels"])
        train = np.asarray(self.split["folds"][fold]["train"], dtype=int)
        return np.bincount(labels[train], minlength=len(self.classes))

    @property
    def kept_fold(self) -> int:
        kept = self.folds.get("kept", 0)
        if isinstance(kept, bool) or not isinstance(kept, int):
            raise FacekitError(f"{self.path / 'folds.json'} is damaged (kept is {json.dumps(kept)[:40]}, not a fold number)")
        return kept

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
        path = self.checkpoint_path(which)
        if which == "best" and not path.is_file():
            raise self.no_results(path)
        weights = load_checkpoint(path)["model"]
        return self.model_with(weights, device=device, channels_last=channels_last)

    def model_with(self, weights: dict[str, Any], *, device: Any = None, channels_last: bool = False) -> "nn.Module":
        """The run's architecture, rebuilt from the registry (:func:`facekit.factory.create_run_model`), with ``weights``."""
        from facekit.factory import create_run_model

        return create_run_model(self.config, len(self.classes), weights, device=device, channels_last=channels_last)

    def latest_state(self) -> FoldState | None:
        """The newest fold's last checkpoint, or None if the run never finished an epoch."""
        checkpoints = sorted((self.path / CHECKPOINTS).glob("fold-*-last.pt"), key=lambda p: int(p.name.split("-")[1]))
        return FoldState.from_dict(load_checkpoint(checkpoints[-1])) if checkpoints else None

    def fold_state(self, fold: int) -> FoldState:
        """Fold ``fold``'s last saved state, as on disk."""
        return FoldState.from_dict(load_checkpoint(self.path / CHECKPOINTS / f"fold-{fold}-last.pt"))


def latest_run(runs_dir: Path = RUNS_DIR) -> Path:
    """The most recently created run folder under ``runs_dir`` that has results (a kept model or test predictions).

    Runs still training, interrupted or failed are passed over: they have nothing to show.
    """
    started = list(Path(runs_dir).glob("*/config.json"))
    runs = [p for p in started if any((p.parent / name).is_file() for name in RESULT_FILES)]
    if not runs:
        detail = f" ({len(started)} unfinished: continue one with `facekit train --resume RUN`)" if started else ""
        raise UsageError(
            f"no runs found with results under {runs_dir}/{detail}: train one with `facekit train --data DIR` or pass RUN"
        )
    return max(runs, key=lambda p: p.stat().st_mtime).parent


@dataclass(frozen=True)
class _ProbsSummary:
    """What the checks need to know of the saved probabilities, without holding them whole."""

    shape: tuple[int, ...]
    finite: bool  # floating-point numbers, every one finite

    @classmethod
    def of(cls, probs: np.ndarray) -> "_ProbsSummary":
        return cls(probs.shape, _finite(probs))

    @classmethod
    def read(cls, data: Any, block: int = 1 << 20) -> "_ProbsSummary":
        """Of the ``probs`` member of an open npz file ``data``, read ``block`` bytes at a time."""
        with data.zip.open("probs.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:  # a format numpy.savez does not write for these arrays
                return cls.of(data["probs"])
            shape, _, dtype = read_header[version](member)
            finite = np.issubdtype(dtype, np.floating)
            step = block - block % dtype.itemsize
            while finite and (chunk := member.read(step)):
                finite = bool(np.isfinite(np.frombuffer(chunk, dtype=dtype)).all())
            return cls(tuple(shape), finite)


def _prediction_problem(
    predictions: dict[str, np.ndarray], probs: _ProbsSummary | None, num_classes: int
) -> str | None:
    """What is wrong with loaded test predictions, or None: shapes that agree, class ids in range,
    probabilities finite (and, of the top k, in [0, 1] and descending)."""
    index, y_true, y_pred = (predictions[key] for key in PREDICTION_KEYS)
    n = len(index)
    top_ids, top_probs = (predictions.get(key) for key in TOP_KEYS)
    mismatched = any(a.ndim != 1 or len(a) != n for a in (index, y_true, y_pred))
    if probs is not None:
        empty = n == 0 and math.prod(probs.shape) == 0  # no test images: probabilities of no particular width
        mismatched = mismatched or (probs.shape != (n, num_classes) and not empty)
    if top_ids is not None:
        k = top_ids.shape[1] if top_ids.ndim == 2 else -1
        empty = n == 0 and top_ids.size == 0 and top_probs.size == 0
        mismatched = mismatched or (
            (top_ids.shape != (n, k) or top_probs.shape != (n, k) or not 1 <= k <= num_classes) and not empty
        )
    if mismatched:
        return f"arrays of mismatched shapes for {num_classes} classes"
    if (probs is not None and not probs.finite) or (top_probs is not None and not _finite(top_probs)):
        return "probabilities that are not finite numbers"
    if top_probs is not None and top_probs.size:
        if top_probs.min() < 0 or top_probs.max() > 1:
            return "top_probs outside 0..1"
        if (np.diff(top_probs, axis=1) > 0).any():
            return "top_probs not in descending order"
    labels = np.concatenate([y_true, y_pred, top_ids.ravel() if top_ids is not None else y_true[:0]])
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes):
        return f"class ids outside 0..{num_classes - 1}"
    return None


def _finite(values: np.ndarray) -> bool:
    """Floating-point numbers, every one finite."""
    return np.issubdtype(values.dtype, np.floating) and bool(np.isfinite(values).all())
