"""Help screens that read well at 80 columns: ``RUN IMAGES...`` placeholders, no type tags on flags.

Typer labels every option with its Python type (``<bool>`` after a flag, ``<list[Path]>``) and
writes required arguments as ``{run}``. :class:`ReadableTyper` makes every command of the app,
plugins' commands included, use :class:`ReadableCommand`, which gives each parameter a
placeholder a user reads (an option's own ``metavar`` wins where one is declared).
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# Python type -> the placeholder shown after an option that takes a value of that type.
PLACEHOLDERS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "Path": "PATH"}


class ReadableArgument(TyperArgument):
    """An argument shown by its name only: ``RUN`` in the usage line, ``[RUN]`` when optional."""

    def display_type_rich(self, ctx: Any) -> None:
        return None  # the name and the help say what it is; a type tag only widens the table

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


class _Readable:
    """Mixed into a command or group: its parameters, --help included, get readable placeholders."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            readable(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        return option if option is None else readable(option)


class ReadableCommand(_Readable, TyperCommand):
    """A command whose help names its values (``--data DIR``, ``RUN``) instead of their Python types."""


class ReadableGroup(_Readable, TyperGroup):
    """A command group with the same readable help for its own options."""


def readable(param: Any) -> Any:
    """Give ``param`` a readable placeholder (in place) and return it."""
    if isinstance(param, TyperArgument):
        param.__class__ = ReadableArgument  # only overrides display methods: no state to set up
        if param.metavar is None:
            param.metavar = param.name.upper()
    elif isinstance(param, TyperOption) and param.metavar is None:
        if param.is_flag:
            param.metavar = ""  # a flag takes no value: nothing to show after it
        elif not param.type_descriptor.is_choice:  # choices are listed as they are
            bare = "Path" if param.type_descriptor.is_path else param.bare_type()
            element = bare.removeprefix("list[").removesuffix("]")
            param.metavar = PLACEHOLDERS.get(element, element.upper())
    return param


class ReadableTyper(typer.Typer):
    """A Typer app whose commands (its own and those plugins add through it) have readable help."""

    def __init__(self, *args: Any, cls: type[TyperGroup] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, cls=cls or ReadableGroup, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or ReadableCommand, **kwargs)
