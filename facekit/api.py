"""Everything a facekit plugin may use, in one import: ``from facekit.api import ...``.

The spec objects a plugin registers (one small dataclass per plugin kind) are the contracts the
training engine and the CLI rely on; the engine never names a concrete architecture, loss or
split. Besides them: ``hookimpl``, the errors the CLI turns into one line (``UsageError`` exits
2, ``FacekitError`` 1), ``ReportContext`` (what a reporter gets), ``Run`` (read a run folder)
and ``verify_sha256`` (refuse a weights file that is not the published one). A plugin imports
nothing else from facekit (tests/test_public_api.py checks the plugins in this repository).

Importing this module stays cheap (no torch): plugins import it when facekit starts.

This module only re-exports (the specs live in :mod:`facekit.specs`): nothing inside facekit
imports it except the built-in plugins, so it can name anything without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facekit.errors import FacekitError, UsageError
from facekit.hookspecs import hookimpl
from facekit.specs import (
    IMAGENET,
    ArchitectureSpec,
    ArchOptions,
    AugmentationSpec,
    Fold,
    LoggerContext,
    LoggerSpec,
    LossOption,
    LossSpec,
    Normalization,
    ReporterSpec,
    RunResults,
    SplitOptions,
    SplitPlan,
    SplitSpec,
    TrainingLogger,
)
from facekit.weights import file_sha256, verify_sha256

if TYPE_CHECKING:  # report and runs import more than a plugin needs at start-up: loaded on first access
    from facekit.report import ReportContext
    from facekit.runs import Run

__all__ = [
    "ArchOptions",
    "ArchitectureSpec",
    "AugmentationSpec",
    "FacekitError",
    "Fold",
    "IMAGENET",
    "LoggerContext",
    "LoggerSpec",
    "LossOption",
    "LossSpec",
    "Normalization",
    "ReportContext",
    "ReporterSpec",
    "Run",
    "RunResults",
    "SplitOptions",
    "SplitPlan",
    "SplitSpec",
    "TrainingLogger",
    "UsageError",
    "file_sha256",
    "hookimpl",
    "verify_sha256",
]

# Names whose modules import more than a plugin needs at start-up: loaded on first access.
_LAZY = {"ReportContext": "facekit.report", "Run": "facekit.runs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facekit.api' has no attribute {name!r}")
