"""Experiment trackers during training (``facekit train --log NAME``), through the logger contract only.

The engine knows trackers as :class:`facekit.specs.LoggerSpec` plugins (built-in: ``tensorboard``
and ``mlflow``, in ``facekit.builtins.loggers``) and talks to them through :class:`Tracking`:
started once the run folder exists, one row per epoch, the test results and the report's files
at the end, closed whatever happens. Only the process that writes the run folder (rank 0 of a
data-parallel job) tracks.

A tracker never stops a training: the first exception it raises (a missing package, a full
disk, a server that cannot be reached) is one :class:`TrackerWarning` naming it, and it is
dropped for the rest of the run. Training goes on.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Sequence

from facekit.specs import LoggerContext, LoggerSpec, RunResults, TrainingLogger

if TYPE_CHECKING:
    from facekit.runs import Run


class TrackerWarning(UserWarning):
    """An experiment tracker failed; training goes on without it."""


def logger_specs(names: Sequence[str] | None) -> list[LoggerSpec]:
    """The trackers named with ``--log`` (each once, in order); an unknown name is a usage error."""
    from facekit.plugins import loggers

    registry = loggers()
    return [registry.get(name) for name in dict.fromkeys(names or ())]


class Tracking:
    """The run's started trackers; every call to one is guarded (see the module docstring)."""

    def __init__(self, started: list[tuple[str, TrainingLogger]] | None = None):
        self.started = list(started or [])

    @classmethod
    def start(cls, specs: Sequence[LoggerSpec], context: LoggerContext) -> "Tracking":
        tracking = cls()
        for spec in specs:
            try:
                tracking.started.append((spec.name, spec.start(context)))
            except Exception as exc:
                _warn(spec.name, exc, "could not start")
        return tracking

    def __bool__(self) -> bool:
        return bool(self.started)

    def __enter__(self) -> "Tracking":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._each("log_epoch", {key: value for key, value in row.items() if key != "best"})

    def log_results(self, run: "Run") -> None:
        """The test results and the report's files (written into ``RUN/report/`` now), to every tracker."""
        if not self.started:
            return
        try:
            results = run_results(run)
        except Exception as exc:  # the report could not be made: the trackers still have every epoch
            warnings.warn(f"the report for the experiment trackers could not be made ({_cause(exc)}); "
                          "they keep every epoch's figures", TrackerWarning, stacklevel=2)  # fmt: skip
            return
        self._each("log_results", results)

    def close(self) -> None:
        self._each("close")
        self.started = []

    def _each(self, method: str, *args: Any) -> None:
        for entry in list(self.started):
            name, logger = entry
            try:
                getattr(logger, method)(*args)
            except Exception as exc:
                self.started.remove(entry)
                _warn(name, exc, "failed")
                if method != "close":
                    try:  # let it release what it holds (files, threads); its own failure is already told
                        logger.close()
                    except Exception:
                        pass


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:  # a server's whole error page says no more than its first lines
        text = text[:300] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _warn(name: str, exc: BaseException, what: str) -> None:
    warnings.warn(f"--log {name} {what} ({_cause(exc)}); training goes on without it", TrackerWarning, stacklevel=3)


def run_results(run: "Run") -> RunResults:
    """Build the run's report (report.md, report.json and the figures, in ``RUN/report/``) and its test figures."""
    from facekit.plots import report_figures
    from facekit.report import REPORT_DIR, build_report, write_report

    report = build_report(run)
    out = run.path / REPORT_DIR
    files = [write_report(report, "markdown", out), write_report(report, "json", out), *report_figures(report, out)]
    averages = report.averages()
    metrics = {
        "test_overall_accuracy": averages["overall_accuracy"],
        "test_balanced_accuracy": averages["balanced_accuracy"],
        "test_macro_f1": averages["macro_f1"],
    }
    return RunResults(run.path, {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}, files)


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """A run's settings as tracker parameters: one string per setting, lists joined, None as ``-``."""
    params = {}
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        params[key] = "-" if value is None else str(value)
    return params


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The figures of an epoch row a tracker plots: finite numbers only (no validation: no val_*)."""
    names = ("train_loss", "val_loss", "train_acc", "val_acc", "lr", "images_per_s", "seconds")
    metrics = {}
    for name in names:
        value = row.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics[name] = float(value)
    return metrics
