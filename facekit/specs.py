"""The contracts between facekit and its plugins: one small frozen dataclass per plugin kind.

This is the lowest module of facekit: it imports nothing of facekit but its errors, so every
module (the engine, the loaders, the registries, the CLI) can import it without a cycle.
Plugins read these same classes through the facade :mod:`facekit.api`, which re-exports them.

To add a field to a spec, give it a default (existing plugins keep working) and document it in
docs/plugins.md; to add a plugin kind, see docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from facekit.errors import UsageError

if TYPE_CHECKING:  # torch is heavy; importing the specs stays cheap
    from torch import nn

__all__ = [
    "IMAGENET",
    "ArchOptions",
    "ArchitectureSpec",
    "AugmentationSpec",
    "Fold",
    "LoggerContext",
    "LoggerSpec",
    "LossOption",
    "LossSpec",
    "Normalization",
    "ReporterSpec",
    "RunResults",
    "SplitOptions",
    "SplitPlan",
    "SplitSpec",
    "TrainingLogger",
]


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std in [0, 1] pixel units: ``x = (pixel / 255 - mean) / std``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[float]]) -> "Normalization":
        return cls(tuple(map(float, data["mean"])), tuple(map(float, data["std"])))


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class ArchOptions:
    """What ``facekit train`` asks of an architecture's builder."""

    num_classes: int
    input_size: int = 224
    finetune: bool = False  # pretrained backbones: train every layer, not just the new head
    weights: Path | None = None  # an explicit weights file (pretrained backbones)
    trust_weights: bool = False  # accept a weights file whose sha256 is not the published one
    pretrained: bool = True  # False builds the same network randomly initialised (tests)


@dataclass(frozen=True)
class ArchitectureSpec:
    """A model: ``build(options) -> nn.Module`` returning logits of shape (N, num_classes).

    ``normalization`` None means "per-channel statistics of the training split"; a pretrained
    backbone declares the statistics it was trained with. Frozen parameters have
    ``requires_grad=False``; the engine optimises only the others.

    ``classifier`` names the final classifier submodule (dotted, as ``model.get_submodule``
    takes it): its input is the image's embedding (N, D), its output is the model's output, the
    logits. facekit reads embeddings there (:mod:`facekit.heads`) and a loss that brings its
    own head replaces that module. None: the architecture gives no embedding.
    """

    name: str
    build: Callable[[ArchOptions], "nn.Module"]
    description: str = ""
    input_size: int = 224
    normalization: Normalization | None = None
    pretrained: bool = False  # needs weights that may have to be found or downloaded
    param_groups: Callable[["nn.Module", float], list[dict[str, Any]]] | None = None  # (model, lr) -> optimizer groups, e.g. a lower backbone lr; None: every trainable parameter at lr
    classifier: str | None = None  # dotted name of the final classifier submodule; its input is the embedding


@dataclass(frozen=True)
class LossOption:
    """One setting a loss takes, given as ``--loss-option NAME=VALUE``.

    Its type is its default's (float, int, bool or str); ``valid(value)`` says whether a value
    of that type is allowed, and ``expected`` says which are, for the error message.
    """

    default: float | int | bool | str
    description: str = ""
    valid: Callable[[Any], bool] | None = None
    expected: str = ""


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _parse_option_value(text: str, default: Any) -> Any:
    """``text`` as the type of ``default``; ValueError when it is not one."""
    if isinstance(default, bool):
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ValueError(text)
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(text)
        return value
    return text


def split_loss_options(items: Sequence[str] | None) -> dict[str, str]:
    """``["s=64", "m=0.5"]`` (repeated ``--loss-option``) as ``{"s": "64", "m": "0.5"}``; a malformed item is a usage error."""
    options: dict[str, str] = {}
    for item in items or ():
        name, equals, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name or not value:
            raise UsageError(f"--loss-option {item!r}: expected NAME=VALUE, e.g. --loss-option m=0.5")
        if name in options and options[name] != value:
            raise UsageError(f"--loss-option {name} is given twice ({name}={options[name]}, {name}={value}): give it once")
        options[name] = value
    return options


@dataclass(frozen=True)
class LossSpec:
    """A loss strategy: ``build(class_counts, **options) -> nn.Module`` called as ``loss(logits, targets)``.

    ``class_counts[c]`` is the number of training images of class ``c``. ``options`` declares
    the settings the loss takes (``--loss-option NAME=VALUE``); build receives each by name,
    the user's value or the default. A loss with a ``head`` brings its own classifier:
    ``head(embedding_dim, num_classes, options) -> nn.Module`` replaces the architecture's final
    classifier (ArchitectureSpec.classifier), so it trains, checkpoints and loads as part of the
    model, and the logits the loss gets (and inference uses) are that head's output.
    """

    name: str
    build: Callable[..., "nn.Module"]
    description: str = ""
    supports_label_smoothing: bool = False  # build also takes ``label_smoothing=`` (0 <= x < 1)
    options: dict[str, LossOption] = field(default_factory=dict)
    head: Callable[[int, int, dict[str, Any]], "nn.Module"] | None = None

    def check_label_smoothing(self, label_smoothing: float) -> None:
        """A UsageError unless this loss can train with ``label_smoothing`` (before any work is done)."""
        if not 0.0 <= label_smoothing < 1.0:
            raise UsageError(f"--label-smoothing {label_smoothing}: expected a number from 0 up to (not including) 1")
        if label_smoothing > 0.0 and not self.supports_label_smoothing:
            raise UsageError(f"--loss {self.name} does not support --label-smoothing; drop the option or choose a loss that does")

    def resolve_options(self, given: dict[str, Any] | Sequence[str] | None) -> dict[str, Any]:
        """Every option of this loss, typed: the given ones (``NAME=VALUE`` texts or a dict of texts
        or values, as config.json holds them) over the defaults. An unknown name or a bad value is
        a :class:`UsageError` naming ``--loss-option NAME=VALUE`` and what it takes."""
        given = split_loss_options(given) if isinstance(given, (list, tuple)) else dict(given or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            takes = (
                "takes " + ", ".join(f"{name} (default {option.default})" for name, option in sorted(self.options.items()))
                if self.options else "takes no --loss-option"
            )
            raise UsageError(f"--loss-option {unknown[0]}={given[unknown[0]]}: loss {self.name!r} has no option {unknown[0]!r}; it {takes}")
        resolved: dict[str, Any] = {}
        for name, option in self.options.items():
            value = given.get(name, option.default)
            expected = option.expected or f"a {type(option.default).__name__}"
            try:
                value = _parse_option_value(value, option.default) if isinstance(value, str) else value
            except ValueError:
                raise UsageError(f"--loss-option {name}={value}: expected {expected} for loss {self.name!r}") from None
            kind = type(option.default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not kind or (option.valid is not None and not option.valid(value)):
                raise UsageError(f"--loss-option {name}={value}: expected {expected} for loss {self.name!r}")
            resolved[name] = value
        return resolved

    def make(self, class_counts: Sequence[int], *, label_smoothing: float = 0.0, options: dict[str, Any] | Sequence[str] | None = None) -> "nn.Module":
        """Build the loss with its resolved options; ``label_smoothing`` > 0 reaches only specs that declare support for it."""
        self.check_label_smoothing(label_smoothing)
        resolved = self.resolve_options(options)
        if label_smoothing == 0.0:
            return self.build(class_counts, **resolved)
        return self.build(class_counts, label_smoothing=label_smoothing, **resolved)

    def make_head(self, embedding_dim: int, num_classes: int, options: dict[str, Any] | Sequence[str] | None = None) -> "nn.Module | None":
        """The loss's own head for ``num_classes`` over ``embedding_dim``-wide embeddings, or None when it brings none."""
        if self.head is None:
            return None
        return self.head(embedding_dim, num_classes, self.resolve_options(options))


@dataclass(frozen=True)
class SplitOptions:
    """Sizes and seed that a split strategy honours (fractions of the whole data set)."""

    seed: int = 0
    test_size: float = 0.2
    val_size: float = 0.1
    folds: int = 5


@dataclass(frozen=True)
class Fold:
    """One model's training and validation indices into the data set's file list."""

    train: np.ndarray
    val: np.ndarray


@dataclass(frozen=True)
class SplitPlan:
    """A fixed test split and one or more folds over the rest (one model is trained per fold)."""

    test: np.ndarray
    folds: list[Fold]
    notes: list[str] = field(default_factory=list)  # documented rules applied, e.g. tiny classes


@dataclass(frozen=True)
class SplitSpec:
    """A split strategy: ``split(labels, options) -> SplitPlan``, deterministic for a seed."""

    name: str
    split: Callable[[np.ndarray, SplitOptions], SplitPlan]
    description: str = ""


@dataclass(frozen=True)
class ReporterSpec:
    """A reporter: ``render(context)`` prints or writes one view of a run's test results.

    ``context`` is a :class:`ReportContext`. Reporters with ``default=True``
    run on a plain ``facekit report``; others run when named with ``--reporter``.
    """

    name: str
    render: Callable[["ReportContext"], Any]  # facekit.report.ReportContext: named, not imported (report sits above specs)
    description: str = ""
    default: bool = True


@dataclass(frozen=True)
class AugmentationSpec:
    """A training-image augmentation that both loader backends run, chosen with ``--augment name[:arg]``.

    - ``parse(arg) -> params``: the text after ``name:`` (None when absent) to the step's fixed
      parameters; bad text raises :class:`facekit.errors.UsageError` naming ``--augment name:arg``.
    - ``sample(rng, n, params) -> float32 array (n, k)``: every image's random draws for one
      epoch, from the epoch's generator (so the same image gets the same draws in every backend).
    - ``apply_torch(images, samples, params) -> images``: the batched step on float32 NCHW
      images in grey levels (0-255, not yet normalized) on any device, with ``samples`` a
      float32 tensor (n, k) on the same device; no Python loop over images. The batch belongs
      to the pipeline: a step may change it in place and return it.
    - ``apply_dali(images, samples, params) -> images``: the same step inside a DALI graph on
      uint8 HWC nodes, ``samples`` a node holding each image's k draws; None when the step has
      no DALI version (a pipeline with such a step then augments in torch after DALI decodes).
    - ``geometric``: the step moves pixels (crop, flip, rotate) rather than changing their values;
      a pipeline runs geometric steps first, then the others, each group in the order given.
    """

    name: str
    parse: Callable[[str | None], Any]
    sample: Callable[[np.random.Generator, int, Any], np.ndarray]
    apply_torch: Callable[[Any, Any, Any], Any]
    description: str = ""
    apply_dali: Callable[[Any, Any, Any], Any] | None = None
    geometric: bool = False


@dataclass(frozen=True)
class LoggerContext:
    """What an experiment tracker is started with: the run it follows."""

    run_dir: Path  # the run folder; a tracker's local files go under it
    config: dict[str, Any]  # the run's settings, as its config.json holds them
    folds: int = 1  # models the run trains (k for --split kfold); epoch rows say which fold
    resumed: bool = False  # a `facekit train --resume` of an interrupted run


@dataclass(frozen=True)
class RunResults:
    """What an experiment tracker gets once the run is measured on its test split."""

    run_dir: Path
    metrics: dict[str, float]  # test figures: overall_accuracy, balanced_accuracy, macro_f1
    files: list[Path]  # the report (report.md, report.json) and its figures (PNG), in RUN/report/


class TrainingLogger(Protocol):
    """What :attr:`LoggerSpec.start` returns: the engine calls these, on rank 0 only.

    ``log_epoch(row)`` after every epoch: ``fold``, ``epoch``, ``train_loss``, ``val_loss``,
    ``train_acc``, ``val_acc`` (NaN when the fold has no validation images), ``lr`` (the
    learning rate the epoch started with), ``images_per_s`` and ``seconds``, among others.
    ``log_results(results)`` once, after the test split is measured. ``close()`` at the end,
    also after a failure or an interruption.
    """

    def log_epoch(self, row: dict[str, Any]) -> None: ...
    def log_results(self, results: RunResults) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class LoggerSpec:
    """An experiment tracker, chosen with ``facekit train --log NAME``: ``start(context) -> TrainingLogger``.

    ``start`` imports what the tracker needs (facekit's own import nothing until then). Any
    exception from the tracker, in ``start`` or later, is one warning and the tracker is
    dropped: training goes on without it.
    """

    name: str
    start: Callable[[LoggerContext], TrainingLogger]
    description: str = ""
