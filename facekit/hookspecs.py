"""The hooks a facekit plugin can implement.

Each hook hands the plugin a ``register`` callback (or the CLI app), so one plugin can add
several things. A plugin is a module listed under the ``facekit`` entry-point group; facekit's
own built-ins are registered exactly the same way.
"""

import pluggy

hookspec = pluggy.HookspecMarker("facekit")
hookimpl = pluggy.HookimplMarker("facekit")


@hookspec
def register_architectures(register):
    """Register model architectures: call ``register(ArchitectureSpec(...))`` for each."""


@hookspec
def register_losses(register):
    """Register loss strategies: call ``register(LossSpec(...))`` for each."""


@hookspec
def register_splits(register):
    """Register split strategies: call ``register(SplitSpec(...))`` for each."""


@hookspec
def register_reporters(register):
    """Register reporters that render a run's report: call ``register(ReporterSpec(...))``."""


@hookspec
def register_commands(cli):
    """Add commands to the ``facekit`` Typer app passed in as ``cli``."""


@hookspec
def register_augmentations(register):
    """Register training-image augmentations: call ``register(AugmentationSpec(...))`` for each."""
