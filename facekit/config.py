"""A training run's settings (:class:`TrainConfig`, saved as the run's config.json) and their limits.

A low module: it imports nothing of facekit but its errors and the schedules' names, so the
engine, the run folder, the loaders and the CLI all read the one definition.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facekit.errors import UsageError
from facekit.schedules import check_schedule

# Loader backends --loader names (besides "auto").
BACKENDS = ("dali", "torch")
# Smallest input size anything in facekit accepts: the built-in networks downsample 5 times,
# and smaller images leave nothing of a face.
MIN_INPUT_SIZE = 32
MAX_ROTATE = 180.0
# 65,536 images of 224 px are 39 GB as float32 on one device already; more is a typo.
MAX_BATCH_SIZE = 65536
MAX_INPUT_SIZE = 4096  # one 4096x4096 image is 200 MB as float32 already; more only exhausts memory
# Settings a resume may change: how long and where it trains, not what it trains (that would no
# longer continue the same run). Others given with --resume are refused by name.
RESUME_SETTINGS = ("epochs", "patience", "threads", "workers", "device", "cache", "compile", "log")
# Of those, the ones that shape the training itself: they apply only while no fold has finished,
# so every fold of a run trains alike.
RESUME_TRAINING_SETTINGS = ("epochs", "patience")


@dataclass
class TrainConfig:
    """Every setting of a training run; saved as the run's config.json."""

    data: Path
    arch: str = "baseline"
    loss: str = "plain"
    # --loss-option NAME=VALUE of the loss (e.g. arcface's s and m); the run records all of them, defaults filled in.
    loss_options: dict[str, Any] | None = None
    split: str = "holdout"
    folds: int = 5
    test_size: float = 0.2
    val_size: float = 0.1
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 5e-3
    patience: int = 0  # early stopping after this many epochs without a better validation loss; 0 = off
    seed: int = 0
    rotate: float | None = None  # --rotate DEG: short for augment ["rotate:DEG"]; runs before --augment have only this
    augment: list[str] | None = None  # training augmentation steps; None: ["rotate:15"] (see facekit.data.augment)
    label_smoothing: float = 0.0
    schedule: str = "constant"  # learning-rate schedule (facekit.schedules)
    input_size: int | None = None  # None: the architecture's own
    finetune: bool = False
    weights: Path | None = None
    trust_weights: bool = False
    loader: str = "auto"
    cache: str | bool = "off"  # auto, memory, disk or off (see facekit.data.decoded_cache); a bool from older runs
    workers: int | None = None
    threads: int | None = None  # torch CPU threads; None: torch's default (one per core)
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA
    channels_last: bool | None = None  # None: on for CUDA
    compile: str | None = None  # torch.compile mode of the training/evaluation steps ("default", "reduce-overhead"); None: eager
    out: Path | None = None
    force: bool = False
    log: list[str] | None = None  # experiment trackers (--log NAME, repeatable): tensorboard, mlflow or a plugin's
    # Open-set evaluation (docs/openset.md): identities held out of training as unknown people,
    # a folder of other people, the false-positive identification rate the threshold is set at,
    # and the score it rejects by ("auto": the best the run has).
    unknown_identities: float = 0.0
    strangers: Path | None = None
    target_fpir: float = 0.01
    openset_score: str = "auto"

    def validate(self) -> None:
        """Refuse every number out of range with a :class:`UsageError` naming its option (nothing is written first)."""

        def require(ok: bool, option: str, value: Any, what: str) -> None:
            if not ok:
                raise UsageError(f"{option} must be {what} (got {value})")

        require(self.epochs >= 1, "--epochs", self.epochs, "at least 1")
        require(1 <= self.batch_size <= MAX_BATCH_SIZE, "--batch-size", self.batch_size, f"from 1 to {MAX_BATCH_SIZE}")
        require(_finite(self.lr) and self.lr > 0, "--lr", self.lr, "a finite number above 0, e.g. 1e-4")
        require(_finite(self.weight_decay) and self.weight_decay >= 0, "--weight-decay", self.weight_decay,
                "a finite number, 0 or more")  # fmt: skip
        require(self.patience >= 0, "--patience", self.patience, "0 (never stop early) or more epochs")
        require(_finite(self.test_size) and 0 < self.test_size < 1, "--test-size", self.test_size,
                "a fraction above 0 and below 1 (facekit report judges the test split)")  # fmt: skip
        require(_finite(self.val_size) and 0 <= self.val_size < 1, "--val-size", self.val_size,
                "a fraction from 0 up to (not including) 1")  # fmt: skip
        require(0 <= self.seed < 2**31, "--seed", self.seed, "from 0 to 2147483647")
        require(self.rotate is None or (_finite(self.rotate) and 0 <= self.rotate <= 180), "--rotate", self.rotate,
                "between 0 and 180 degrees (0 turns rotation off)")  # fmt: skip
        require(self.input_size is None or MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE, "--input-size",
                self.input_size, f"from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} pixels")  # fmt: skip
        require(self.loader.lower() in ("auto", *BACKENDS), "--loader", self.loader, f"one of auto, {', '.join(BACKENDS)}")
        require(self.workers is None or self.workers >= 0, "--workers", self.workers, "0 (load in this process) or more")
        require(self.threads is None or self.threads >= 1, "--threads", self.threads, "at least 1")
        check_schedule(self.schedule)
        require(_finite(self.unknown_identities) and 0 <= self.unknown_identities < 1, "--unknown-identities",
                self.unknown_identities, "a fraction of the identities from 0 (none) up to (not including) 1")  # fmt: skip
        require(_finite(self.target_fpir) and 0 < self.target_fpir < 1, "--target-fpir", self.target_fpir,
                "a rate above 0 and below 1, e.g. 0.01")  # fmt: skip
        require(self.openset_score in ("auto", "softmax", "centroid", "margin"), "--openset-score", self.openset_score,
                "one of auto, softmax, centroid, margin")  # fmt: skip
        if self.strangers is not None and not Path(self.strangers).is_dir():
            raise UsageError(f"--strangers {self.strangers} is not a folder: give a folder with one sub-folder of images per person")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("data", "weights", "out", "strangers"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(**values)



def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
