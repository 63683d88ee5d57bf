"""The ``facekit`` command line: this module only assembles the app and runs it.

Each command lives in a module of its own (``train_cmd``, ``predict_cmd``, ``report_cmd``,
``data_cmd``...): it parses, calls ONE library function and prints. Errors become one line in
one place (:mod:`facekit.cli.errors`); plugins add their commands when :func:`main` starts.
"""

from __future__ import annotations

import sys
import warnings

import typer

import facekit
from facekit.cli import (
    data_cmd,
    demo_cmd,
    embed_cmd,
    enroll_cmd,
    export_cmd,
    plugins_cmd,
    predict_cmd,
    report_cmd,
    train_cmd,
)
from facekit.cli.output import console, err_console, one_line_warning
from facekit.cli.errors import DEBUG_ENV, FacekitGroup, exit_with, quit_on_late_interrupt
from facekit.cli.help import ReadableTyper
from facekit.errors import FacekitError

__all__ = ["DEBUG_ENV", "FacekitGroup", "app", "console", "err_console", "main"]

app = ReadableTyper(
    cls=FacekitGroup,
    help="Train face-identity classifiers over many imbalanced classes and judge them per class.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # every command's, plugins' too (contexts inherit it)
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"facekit {facekit.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    strict: bool = typer.Option(False, "--strict", help="A plugin that fails to load is an error (or FACEKIT_STRICT_PLUGINS=1)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """facekit: per-class honest face-identity classification."""


app.command("train", cls=train_cmd.TrainCommand)(train_cmd.train)
app.command("predict")(predict_cmd.predict)
app.command("demo")(demo_cmd.demo)
app.command("plugins")(plugins_cmd.plugins)
app.add_typer(data_cmd.app, name="data")
app.command("embed")(embed_cmd.embed)
app.command("export")(export_cmd.export)
app.command("report")(report_cmd.report)
app.command("kernels")(report_cmd.kernels)
app.command("enroll")(enroll_cmd.enroll)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: load plugins (and their commands), then run."""
    from facekit.plugins import PluginSet, reset_plugins, strict_from_env

    warnings.showwarning = one_line_warning
    argv = sys.argv[1:] if argv is None else argv
    try:
        plugin_set = PluginSet(strict=("--strict" in argv) or strict_from_env())
        reset_plugins(plugin_set)
        plugin_set.add_commands(app)
    except FacekitError as exc:
        exit_with(exc)
    try:
        app(args=argv, prog_name="facekit")
    finally:
        quit_on_late_interrupt()
