"""The hooks a facekit plugin can implement.

Each hook hands the plugin a ``register`` callback (or the CLI app), so one plugin can add
several things. A plugin is a module listed under the ``facekit`` entry-point group; facekit's
own built-ins are registered exactly the same way. docs/plugins.md documents each hook's
arguments; tests/test_hooks_documented.py keeps it in step with these signatures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # annotations only: importing facekit stays cheap
    import typer

    from facekit.specs import ArchitectureSpec, AugmentationSpec, LoggerSpec, LossSpec, ReporterSpec, SplitSpec

hookspec = pluggy.HookspecMarker("facekit")
hookimpl = pluggy.HookimplMarker("facekit")


@hookspec
def register_architectures(register: Callable[[ArchitectureSpec], None]) -> None:
    """Register model architectures: call ``register(ArchitectureSpec(...))`` for each."""


@hookspec
def register_losses(register: Callable[[LossSpec], None]) -> None:
    """Register loss strategies: call ``register(LossSpec(...))`` for each."""


@hookspec
def register_splits(register: Callable[[SplitSpec], None]) -> None:
    """Register split strategies: call ``register(SplitSpec(...))`` for each."""


@hookspec
def register_reporters(register: Callable[[ReporterSpec], None]) -> None:
    """Register reporters that render a run's report: call ``register(ReporterSpec(...))``."""


@hookspec
def register_commands(cli: typer.Typer) -> None:
    """Add commands to the ``facekit`` Typer app passed in as ``cli``."""


@hookspec
def register_augmentations(register: Callable[[AugmentationSpec], None]) -> None:
    """Register training-image augmentations: call ``register(AugmentationSpec(...))`` for each."""


@hookspec
def register_loggers(register: Callable[[LoggerSpec], None]) -> None:
    """Register experiment trackers for ``facekit train --log NAME``: call ``register(LoggerSpec(...))`` for each."""
