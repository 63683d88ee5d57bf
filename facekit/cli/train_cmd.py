"""``facekit train``: its options are generated from the run's settings, then one library call.

Every option that is a setting of the run comes from :class:`facekit.config.TrainConfig`'s field
declarations (name, type, default, help, limits), so the command line cannot drift from the
config: adding a field adds its option. The few options that are not settings of a run (where
to resume from, how many processes, how to print) are declared here.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Optional

import typer

from facekit.cli.output import console, err_console
from facekit.cli.help import ReadableCommand
from facekit.config import Option, TrainConfig, options, setting_types
from facekit.errors import UsageError
from facekit.text import rich_safe

# The options of the command itself (not settings of the run): name -> (type, typer.Option).
COMMAND_OPTIONS: dict[str, tuple[Any, Any]] = {
    "resume": (
        Optional[Path],
        typer.Option(None, "--resume", metavar="RUN", help="Continue an interrupted run from its last checkpoint."),
    ),
    "nproc": (
        Optional[int],
        typer.Option(
            None, "--nproc", metavar="N", show_default="one process, no torchrun",
            help="Train data-parallel on N processes of this machine (one per GPU): starts torchrun for you.",
        ),
    ),  # fmt: skip
    "config_file": (
        Optional[Path],
        typer.Option(
            None, "--config", metavar="FILE", show_default="none",
            help="Training settings from a YAML (or JSON) file, e.g. a run's config.json; options given here override it.",
        ),
    ),  # fmt: skip
    "print_config": (
        bool,
        typer.Option(False, "--print-config", help="Print the settings this would train with, as YAML for --config, and exit."),
    ),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="Print only the result.")),
    "as_json": (bool, typer.Option(False, "--json", help="Print the result as JSON (implies --quiet).")),
}


class TrainCommand(ReadableCommand):
    """``train``, where an option with an optional value may stand bare: ``--cache`` (the on/off flag
    of earlier versions) means ``--cache auto``, ``--compile`` means ``--compile default``
    (:attr:`facekit.config.Option.bare`; Typer's own ``flag_value`` is not honoured for such options)."""

    def parse_args(self, ctx, args):
        bare = {option.flag_for(name): option.bare for name, option in options().items() if option.bare and option.cli}
        args = [
            f"{arg}={bare[arg]}" if arg in bare and (i + 1 == len(args) or args[i + 1].startswith("-")) else arg
            for i, arg in enumerate(args)
        ]
        return super().parse_args(ctx, args)


def train(ctx: typer.Context, **params: Any) -> None:
    """Train a model; the run folder holds everything `facekit report` reads."""
    from facekit.cli.progress import ConsoleProgress
    from facekit.distributed import Distributed, launch
    from facekit.engine import Trainer

    settings = {name: params[name] for name, option in options().items() if option.cli}
    negated = _negations(ctx, params)
    # Only what was typed counts over a --config file (and for --resume: the engine applies what a
    # resume may change and refuses the rest).
    given = {name: value for name, value in settings.items() if _typed(ctx, name)} | negated
    from_file = params["config_file"] is not None or params["print_config"]
    if from_file and params["resume"] is not None:
        raise UsageError("--config and --print-config are for a new run; --resume continues a run with its own settings: drop them")
    if params["print_config"]:
        from facekit.config_files import printed_config

        typer.echo(printed_config(params["config_file"], given, _note), nl=False)
        return
    if params["nproc"] is not None:
        launch(params["nproc"], _typed_arguments(ctx, leave_out="nproc"))
        return
    as_json = params["as_json"]
    progress = ConsoleProgress(err_console if as_json else console, quiet=params["quiet"] or as_json)
    if params["resume"] is not None:
        run_dir = Trainer.resume(params["resume"], progress, **given)
    else:
        if params["config_file"] is not None:
            from facekit.config_files import configured

            config = configured(params["config_file"], given, _note)
        else:
            config = TrainConfig(**(settings | negated))
        if config.data is None:
            raise UsageError("--data DIR is required (a folder with one sub-folder per identity, or data: in --config), or --resume RUN")
        run_dir = Trainer(config, progress).train()
    if Distributed.from_env().is_main:  # under torchrun, rank 0 speaks for the job
        _print_result(run_dir, as_json)


def _note(text: str) -> None:
    """A line about the settings, on stderr (stdout may be the YAML of --print-config)."""
    err_console.print(text, soft_wrap=True, highlight=False, markup=False)


def _negations(ctx: typer.Context, params: dict[str, Any]) -> dict[str, Any]:
    """The settings a ``--no-...`` flag set (``--no-cache``: cache "off"); giving both forms is refused."""
    negated = {}
    for name, option in options().items():
        if option.negation is None or not params[_negation_name(name)]:
            continue
        flag, value, _ = option.negation
        if _typed(ctx, name) and params[name] != value:
            raise UsageError(f"{flag} and {option.flag_for(name)} contradict each other: give one of them")
        negated[name] = value
    return negated


def _negation_name(name: str) -> str:
    return f"no_{name}"


def _option_type(option: Option, declared: Any, default: Any) -> Any:
    """The Typer type of a setting: the field's (``declared``), Optional where its default is None."""
    kind = option.cli_type or declared
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kinds = [k for k in typing.get_args(kind) if k is not type(None)]
        kind = kinds[0] if len(kinds) == 1 else str  # str | bool (the cache of older runs): text on the command line
    return Optional[kind] if default is None else kind


def _parameters(config: type = TrainConfig) -> list[inspect.Parameter]:
    """``train``'s parameters: ctx, one per setting of ``config`` (and its --no- form), then the command's own."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    declared_types = setting_types() if config is TrainConfig else typing.get_type_hints(config)
    found = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for item in fields(config):
        option: Option = item.metadata["option"]
        if not option.cli:
            continue
        default = None if item.default is MISSING else item.default
        shown = option.shown_default if option.shown_default is not None else True
        declared = typer.Option(
            default, option.flag_for(item.name), metavar=option.metavar, help=option.help, show_default=shown
        )
        found.append(inspect.Parameter(item.name, keyword, default=declared, annotation=_option_type(option, declared_types[item.name], default)))
        if option.negation is not None:
            flag, _, help_text = option.negation
            declared = typer.Option(False, flag, help=help_text)
            found.append(inspect.Parameter(_negation_name(item.name), keyword, default=declared, annotation=bool))
    for name, (kind, declared) in COMMAND_OPTIONS.items():
        found.append(inspect.Parameter(name, keyword, default=declared, annotation=kind))
    return found


train.__signature__ = inspect.Signature(_parameters(), return_annotation=None)
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()} | {"return": None}


def _typed_arguments(ctx: typer.Context, leave_out: str) -> list[str]:
    """The arguments that repeat ``ctx``'s command (only the options given), less ``leave_out``."""
    args = ["--strict"] if ctx.parent is not None and ctx.parent.params.get("strict") else []
    args.append(ctx.info_name or "")
    for param in ctx.command.params:
        value = ctx.params[param.name]
        if param.name == leave_out or not _typed(ctx, param.name):
            continue
        if getattr(param, "is_flag", False):
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif getattr(param, "multiple", False):  # a repeatable option: once per value
            args += [part for item in value for part in (param.opts[0], str(item))]
        else:
            args += [param.opts[0], str(value)]
    return args


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the option ``name`` was given (on the command line or by its environment variable), not defaulted."""
    source = ctx.get_parameter_source(name)  # an enum of Typer's bundled Click: compared by name
    return source is not None and source.name != "DEFAULT"


def _print_result(run_dir: Path, as_json: bool) -> None:
    from facekit.runs import Run

    run = Run(run_dir)
    summary: dict[str, Any] = {"run": str(run_dir), "folds": run.folds}
    if run.has_predictions:
        from facekit.metrics import per_class_metrics

        y_true, y_pred = run.test_labels()  # not probs: N x C floats are gigabytes for many classes
        metrics = per_class_metrics(y_true, y_pred, len(run.classes))
        summary |= {"test_accuracy": metrics.overall_accuracy, "balanced_accuracy": metrics.balanced_accuracy}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    line = f"[bold]run[/bold] {rich_safe(run_dir)}"
    if "test_accuracy" in summary:
        line += f"  test accuracy {summary['test_accuracy']:.3f}  balanced accuracy {summary['balanced_accuracy']:.3f}"
    console.print(line, highlight=False)
    console.print(f"next: facekit report {rich_safe(run_dir)}", style="dim", highlight=False)
