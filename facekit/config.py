"""A training run's settings (:class:`TrainConfig`, saved as the run's config.json): the one source of every option.

Each field declares, once, everything about its option (:func:`setting`): its name and type
(the field's), its default, its limits and its help. From that single declaration

- ``facekit train`` generates its Typer options (:mod:`facekit.cli.train_cmd`), with the same
  defaults and help;
- :meth:`TrainConfig.validated` checks every value, once, before anything is done, and
  normalises the spelling (``--cache Disk`` is ``disk``), so the engine, the loaders and the
  cache receive values they need not check again;
- ``--resume`` knows which settings it may change (``resume=True``).

Adding a training option is one field declaration here (docs/architecture.md shows how).
A low module: it imports nothing of facekit but its errors and the schedules' names, so the
engine, the run folder, the loaders and the CLI all read the one definition.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from facekit.errors import UsageError
from facekit.schedules import SCHEDULES, check_schedule

# Loader backends --loader names (besides "auto").
BACKENDS = ("dali", "torch")
# Where --cache keeps decoded images (facekit.data.decoded_cache.choose_cache says what each means).
CACHE_CHOICES = ("auto", "memory", "disk", "off")
# torch.compile modes --compile takes (facekit.compiling).
COMPILE_MODES = ("default", "reduce-overhead")
OPENSET_SCORES = ("auto", "softmax", "centroid", "margin")
# Smallest input size anything in facekit accepts: the built-in networks downsample 5 times,
# and smaller images leave nothing of a face.
MIN_INPUT_SIZE = 32
MAX_ROTATE = 180.0
# 65,536 images of 224 px are 39 GB as float32 on one device already; more is a typo.
MAX_BATCH_SIZE = 65536
MAX_INPUT_SIZE = 4096  # one 4096x4096 image is 200 MB as float32 already; more only exhausts memory
# Of the settings a resume may change (resume=True below), the ones that shape the training
# itself: they apply only while no fold has finished, so every fold of a run trains alike.
RESUME_TRAINING_SETTINGS = ("epochs", "patience")


@dataclass(frozen=True)
class Option:
    """How one :class:`TrainConfig` field is offered as a ``facekit train`` option, and checked.

    ``ok(value)`` False refuses the value as "``flag`` must be ``must_be`` (got value)";
    ``refuse(value)`` raises its own :class:`UsageError` where a sentence says more (a name not
    among the choices, a folder that is not there). Neither sees None where None is the default.
    """

    help: str
    flag: str | None = None  # default: --field-name
    metavar: str | None = None
    ok: Callable[[Any], bool] | None = None
    must_be: str = ""
    refuse: Callable[[Any], None] | None = None
    normalize: Callable[[Any], Any] | None = None  # the one spelling the run records (e.g. lower case)
    shown_default: str | None = None  # the help's default where the field's own (None) would say nothing
    bare: str | None = None  # the value the option means when given without one (--cache: auto)
    negation: tuple[str, Any, str] | None = None  # (flag, the value it sets, help): --no-cache sets "off"
    cli_type: Any = None  # the option's type where it differs from the field's (--loss-option: list[str])
    resume: bool = False  # a --resume may change it (how long and where a run trains, not what)
    cli: bool = True  # False: a setting of the config alone (amp, channels_last), no option

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def setting(default: Any = dataclasses.MISSING, help: str = "", **option: Any) -> Any:
    """A :class:`TrainConfig` field with its option: ``setting(10, "Training epochs per fold.", ok=..., must_be=...)``."""
    return field(default=default, metadata={"option": Option(help=help, **option)})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(flag: str, choices: tuple[str, ...]) -> Callable[[Any], None]:
    def refuse(value: Any) -> None:
        if str(value).lower() not in choices:
            raise UsageError(f"{flag} {value}: choose one of {', '.join(choices)}")

    return refuse


def _compile_mode(value: Any) -> None:
    if value not in COMPILE_MODES:
        raise UsageError(f"--compile {value!r} is not a compile mode: use {' or '.join(COMPILE_MODES)}")


def _strangers(value: Any) -> None:
    if not Path(value).is_dir():
        raise UsageError(f"--strangers {value} is not a folder: give a folder with one sub-folder of images per person")


def cache_choice(value: str | bool) -> str:
    """A ``--cache`` value in the spelling a run records; True and False (the flag of older runs) are "auto" and "off"."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    return str(value).lower()


@dataclass
class TrainConfig:
    """Every setting of a training run; saved as the run's config.json. Each field is one ``facekit train`` option."""

    data: Path = setting(help="Folder with one sub-folder of images per identity.", metavar="DIR")
    arch: str = setting("baseline", "Architecture (see `facekit plugins --all`).", metavar="NAME")
    loss: str = setting("plain", "Loss strategy: plain, weighted (1/n_c), arcface, cosface, or a plugin's.", metavar="NAME")
    # The run records all of its loss's options, defaults filled in (LossSpec.resolve_options).
    loss_options: dict[str, Any] | None = setting(
        None, "A setting of the loss, repeatable: arcface/cosface take s (scale), m (margin) and weighted "
        "(true: 1/n_c class weights).",
        flag="--loss-option", metavar="NAME=VALUE", cli_type=list[str], shown_default="the loss's own",
    )  # fmt: skip
    split: str = setting("holdout", "Split strategy: holdout or kfold, or a plugin's.", metavar="NAME")
    folds: int = setting(5, "K for --split kfold.")  # the split checks it (a plugin's may take any K)
    test_size: float = setting(
        0.2, "Share of each class held out for the test split.", ok=lambda v: _finite(v) and 0 < v < 1,
        must_be="a fraction above 0 and below 1 (facekit report judges the test split)",
    )  # fmt: skip
    val_size: float = setting(
        0.1, "Share of each class used for validation (holdout).", ok=lambda v: _finite(v) and 0 <= v < 1,
        must_be="a fraction from 0 up to (not including) 1",
    )  # fmt: skip
    epochs: int = setting(10, "Training epochs per fold.", ok=lambda v: v >= 1, must_be="at least 1", resume=True)
    batch_size: int = setting(
        32, "Images per training batch (the whole job's, with --nproc or torchrun).",
        ok=lambda v: 1 <= v <= MAX_BATCH_SIZE, must_be=f"from 1 to {MAX_BATCH_SIZE}",
    )  # fmt: skip
    lr: float = setting(1e-4, "Adam learning rate.", ok=lambda v: _finite(v) and v > 0, must_be="a finite number above 0, e.g. 1e-4")
    weight_decay: float = setting(5e-3, "Adam weight decay.", ok=lambda v: _finite(v) and v >= 0, must_be="a finite number, 0 or more")
    patience: int = setting(
        0, "Stop after this many epochs without a better validation loss (0: never).",
        ok=lambda v: v >= 0, must_be="0 (never stop early) or more epochs", resume=True,
    )  # fmt: skip
    seed: int = setting(
        0, "Random seed for the split, initial weights and augmentation.", ok=lambda v: 0 <= v < 2**31,
        must_be="from 0 to 2147483647",
    )  # fmt: skip
    # Runs from before --augment have only this; the engine folds it into augment.
    rotate: float | None = setting(
        None, "Random rotation range in degrees for training images (0: off); short for --augment rotate:DEG.",
        metavar="DEG", ok=lambda v: _finite(v) and 0 <= v <= MAX_ROTATE, must_be="between 0 and 180 degrees (0 turns rotation off)",
        shown_default="15, as --augment rotate:15",
    )  # fmt: skip
    augment: list[str] | None = setting(
        None, "Training augmentation NAME[:ARG], repeatable: rotate, flip, crop, color, erase or a plugin's "
        "(giving it replaces the default).",
        metavar="STEP", shown_default="rotate:15",
    )  # fmt: skip
    # Checked by the loss (LossSpec.check_label_smoothing): whether it applies depends on the loss.
    label_smoothing: float = setting(0.0, "Label smoothing of the training loss (0 up to 1; 0: off).", metavar="X")
    schedule: str = setting(
        "constant", f"Learning-rate schedule over the run: {', '.join(SCHEDULES[:-1])} or {SCHEDULES[-1]}.",
        metavar="NAME", refuse=check_schedule,
    )  # fmt: skip
    input_size: int | None = setting(
        None, "Square input size in pixels.", ok=lambda v: MIN_INPUT_SIZE <= v <= MAX_INPUT_SIZE,
        must_be=f"from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} pixels",
        shown_default="the architecture's: 224 for baseline, tronnet, resnet18; 150 for dlib-resnet",
    )  # fmt: skip
    finetune: bool = setting(False, "Pretrained backbones: train every layer, not just the head.")
    weights: Path | None = setting(None, "Pretrained weights file (sha256 checked).", metavar="FILE", shown_default="none")
    trust_weights: bool = setting(False, "Accept a --weights file whose sha256 is not the published one.")
    loader: str = setting(
        "auto", "Data loader: auto (the faster measured on this device, for training and for evaluation), dali or torch.",
        metavar="NAME",
        refuse=lambda v: _require(str(v).lower() in ("auto", *BACKENDS), "--loader", v, f"one of auto, {', '.join(BACKENDS)}"),
        normalize=str.lower,
    )  # fmt: skip
    # A bool in runs of earlier versions (the flag --cache): True is "auto", False "off".
    cache: str | bool = setting(
        "off", "Keep decoded images after the first epoch: auto (device, RAM or disk, where they fit), memory, "
        "disk or off; a bare --cache is auto.",
        metavar="WHERE", refuse=lambda v: isinstance(v, bool) or _choice("--cache", CACHE_CHOICES)(v), normalize=cache_choice, bare="auto",
        negation=("--no-cache", "off", "Same as --cache off."), cli_type=str, resume=True,
    )  # fmt: skip
    workers: int | None = setting(
        None, "Loader worker processes / threads (0: load in this process).", ok=lambda v: v >= 0,
        must_be="0 (load in this process) or more", shown_default="one per core, up to 8", resume=True,
    )  # fmt: skip
    threads: int | None = setting(
        None, "CPU threads for torch (1 on a machine other jobs share).", ok=lambda v: v >= 1, must_be="at least 1",
        shown_default="one per core", resume=True,
    )  # fmt: skip
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", metavar="DEVICE", resume=True)
    amp: bool | None = setting(None, "Mixed precision; None: on for CUDA.", cli=False)
    channels_last: bool | None = setting(None, "Channels-last memory layout; None: on for CUDA.", cli=False)
    compile: str | None = setting(
        None, "Compile the training and evaluation steps with torch.compile: default (a bare --compile) or "
        "reduce-overhead (CUDA graphs, CUDA only).",
        metavar="MODE", refuse=_compile_mode, bare="default", shown_default="off: eager", resume=True,
        negation=("--no-compile", None, "Train eagerly (with --resume: though the run was compiled)."),
    )  # fmt: skip
    out: Path | None = setting(None, "Run folder.", metavar="DIR", shown_default="runs/<time>-<arch>-<loss>")
    force: bool = setting(False, "Replace an existing run folder given with --out.")
    # Experiment trackers (facekit.tracking); where a run reports is this session's choice, so a resume may change it.
    log: list[str] | None = setting(
        None, "Experiment tracker, repeatable: tensorboard, mlflow or a plugin's.", metavar="NAME", shown_default="none",
        resume=True,
    )  # fmt: skip
    # Open-set evaluation (docs/openset.md): identities held out of training as unknown people,
    # a folder of other people, the false-positive identification rate the threshold is set at,
    # and the score it rejects by ("auto": the best the run has).
    unknown_identities: float = setting(
        0.0, "Hold this share of the identities out of training as unknown people (open-set evaluation; seeded).",
        flag="--unknown-identities", metavar="SHARE", ok=lambda v: _finite(v) and 0 <= v < 1,
        must_be="a fraction of the identities from 0 (none) up to (not including) 1",
    )  # fmt: skip
    strangers: Path | None = setting(
        None, "A folder of other people (one sub-folder each): unknowns for open-set evaluation.", metavar="DIR",
        refuse=_strangers, shown_default="none",
    )  # fmt: skip
    target_fpir: float = setting(
        0.01, "Calibrate the rejection threshold to name at most this share of unknown people.", metavar="RATE",
        ok=lambda v: _finite(v) and 0 < v < 1, must_be="a rate above 0 and below 1, e.g. 0.01",
    )  # fmt: skip
    openset_score: str = setting(
        "auto", "Score to reject by: auto (the best the run has), softmax, centroid or margin.", metavar="NAME",
        ok=lambda v: v in OPENSET_SCORES, must_be=f"one of {', '.join(OPENSET_SCORES)}",
    )  # fmt: skip

    def validated(self) -> "TrainConfig":
        """This config, every value checked against its option's limits (a :class:`UsageError` naming the
        option, before anything is written) and in the one spelling a run records."""
        values = {}
        for item in dataclasses.fields(self):
            option, value = item.metadata["option"], getattr(self, item.name)
            if value is not None or item.default is not None:
                if option.ok is not None:
                    _require(option.ok(value), option.flag_for(item.name), value, option.must_be)
                if option.refuse is not None:
                    option.refuse(value)
                if option.normalize is not None:
                    value = option.normalize(value)
            values[item.name] = value
        return dataclasses.replace(self, **values)

    def validate(self) -> None:
        """Refuse every value out of range with a :class:`UsageError` naming its option (see :meth:`validated`)."""
        self.validated()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A config from config.json (its extra keys, such as ``device_used``, are left out)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in path_settings():
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(**values)


def _require(ok: bool, flag: str, value: Any, must_be: str) -> None:
    if not ok:
        raise UsageError(f"{flag} must be {must_be} (got {value})")


def options() -> dict[str, Option]:
    """Every setting's option, in declaration order (the order of ``facekit train --help``)."""
    return {item.name: item.metadata["option"] for item in dataclasses.fields(TrainConfig)}


@functools.cache
def setting_types() -> dict[str, Any]:
    """Every setting's declared type (``int``, ``float | None``, ``list[str] | None``...)."""
    return typing.get_type_hints(TrainConfig)


def path_settings() -> tuple[str, ...]:
    """The settings that hold a path (config.json keeps them as text)."""
    return tuple(name for name, kind in setting_types().items() if Path in (kind, *typing.get_args(kind)))


# Settings a resume may change: how long and where it trains, not what it trains (that would no
# longer continue the same run). Others given with --resume are refused by name.
RESUME_SETTINGS = tuple(name for name, option in options().items() if option.resume)
