"""The ``facekit`` command: each command parses, calls a library function, prints."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

import facekit
from facekit.cli.help import ReadableCommand, ReadableGroup, ReadableTyper
from facekit.errors import FacekitError, UsageError
from facekit.text import printable, rich_safe


DEBUG_ENV = "FACEKIT_DEBUG"
# What the [train] extra installs, by import name: a command that needs one of them, run where only
# `pip install facekit` (bundle predictions) was installed, says which extra to add.
TRAINING_MODULES = ("torch", "torchvision", "nvidia", "sklearn", "matplotlib")


class FacekitGroup(ReadableGroup):
    """Turns a FacekitError raised by any command, plugins' included, into one line and its exit code.

    So does a file the operating system refused (a full disk, a read-only folder: exit 1), Ctrl-C,
    which names the command that continues an interrupted training, and any other exception
    (exit 1; ``FACEKIT_DEBUG=1`` shows its traceback).
    """

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        self._invoked = (command, list(rest))  # for advice that depends on the command's options
        return name, command, rest

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BaseException as exc:
            return self._end(exc)

    def _end(self, exc: BaseException):
        """The one line that ends a failed or interrupted command (after any progress bar is gone)."""
        from facekit.cli.progress import stop_bars

        stop_bars()
        try:
            raise exc
        except FacekitError as exc:
            if not str(exc):  # said already (a rank of a job facekit launched spoke for it)
                raise typer.Exit(exc.exit_code) from None
            typer.echo(f"Error: {printable(_scrubbed(str(exc)), keep=chr(10))}{_blame(exc)}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            from facekit.files import os_error_line

            typer.echo(f"Error: {printable(os_error_line(exc))}{self._out_hint(exc)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            from facekit.distributed import Distributed

            if not Distributed.from_env().is_main:  # rank 0 alone tells the user how to continue
                raise typer.Exit(130) from None
            run_dir = getattr(exc, "run_dir", None)
            hint = f" Continue with: facekit train --resume {shlex.quote(str(run_dir))}" if run_dir else ""
            typer.echo(f"Interrupted.{hint}", err=True)
            raise typer.Exit(130) from None
        except (typer.exceptions.TyperException, typer.Exit, typer.Abort):
            raise  # the command line's own usage errors and exits
        except ModuleNotFoundError as exc:
            # `pip install facekit` alone predicts from ONNX bundles; training needs the [train] extra.
            missing = (exc.name or "").partition(".")[0]
            if missing not in TRAINING_MODULES or os.environ.get(DEBUG_ENV):
                raise
            typer.echo(
                f"Error: facekit {ctx.invoked_subcommand or ''} needs the training tools ({missing} is not installed): "
                "pip install 'facekit[train]'",
                err=True,
            )
            raise typer.Exit(1) from None
        except Exception as exc:
            from facekit.files import interrupted_write

            if interrupted_write(exc):  # Ctrl-C inside torch's writer comes out as a RuntimeError
                typer.echo("Interrupted.", err=True)
                raise typer.Exit(130) from None
            # A failure nobody foresaw (facekit's or a plugin's): still one line, and the traceback
            # for a bug report when asked for.
            if os.environ.get(DEBUG_ENV):
                raise
            where = printable(_scrubbed(str(exc)).splitlines()[0]) if str(exc).strip() else ""
            culprit = _blame(exc)
            typer.echo(
                f"Error: unexpected {exc.__class__.__name__}: {where}{culprit} "
                f"(rerun with {DEBUG_ENV}=1 for the traceback, and report it if "
                f"{'the plugin' if culprit else 'facekit'} is at fault)",
                err=True,
            )
            raise typer.Exit(1) from None


    def _out_hint(self, exc: OSError) -> str:
        """A folder that cannot be written, by a command with an --out option the user did not give: say so."""
        import errno

        command, args = getattr(self, "_invoked", (None, []))
        has_out = command is not None and any("--out" in getattr(param, "opts", ()) for param in command.params)
        typed = any(arg == "--out" or arg.startswith("--out=") for arg in args)
        unwritable = exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)
        return "; or pass --out DIR to write elsewhere" if has_out and unwritable and not typed else ""


def _scrubbed(message: str) -> str:
    """``message`` without PyTorch's advice to unpickle untrusted files, whoever passed it on (a plugin, torch)."""
    from facekit.weights import scrub_torch_advice

    return scrub_torch_advice(message)


def _blame(exc: BaseException) -> str:
    """`` (in plugin 'x' from package y)`` when a third-party plugin's code raised ``exc``, unless the message names it."""
    from facekit.plugins import plugin_behind

    info = plugin_behind(exc)
    if info is None or info.package in str(exc):
        return ""
    return f" (in {info.label})"


app = ReadableTyper(
    cls=FacekitGroup,
    help="Train face-identity classifiers over many imbalanced classes and judge them per class.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"[yellow]Warning:[/yellow] {rich_safe(message)}", highlight=False, soft_wrap=True)  # one line, however long


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


# ----------------------------------------------------------------------------- train
class TrainCommand(ReadableCommand):
    """``train``, where an option with an optional value may stand bare: ``--cache`` (the on/off flag
    of earlier versions) means ``--cache auto``, ``--compile`` means ``--compile default``."""

    BARE = {"--cache": "auto", "--compile": "default"}

    def parse_args(self, ctx, args):
        args = [
            f"{arg}={self.BARE[arg]}" if arg in self.BARE and (i + 1 == len(args) or args[i + 1].startswith("-")) else arg
            for i, arg in enumerate(args)
        ]
        return super().parse_args(ctx, args)


@app.command(cls=TrainCommand)
def train(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", metavar="DIR", help="Folder with one sub-folder of images per identity."),
    arch: str = typer.Option("baseline", "--arch", metavar="NAME", help="Architecture (see `facekit plugins --all`)."),
    loss: str = typer.Option(
        "plain", "--loss", metavar="NAME", help="Loss strategy: plain, weighted (1/n_c), arcface, cosface, or a plugin's."
    ),
    loss_options: Optional[list[str]] = typer.Option(
        None, "--loss-option", metavar="NAME=VALUE",
        help="A setting of the loss, repeatable: arcface/cosface take s (scale), m (margin) and weighted (true: 1/n_c class weights).",
    ),  # fmt: skip
    split: str = typer.Option("holdout", "--split", metavar="NAME", help="Split strategy: holdout or kfold, or a plugin's."),
    folds: int = typer.Option(5, "--folds", help="K for --split kfold."),
    test_size: float = typer.Option(0.2, "--test-size", help="Share of each class held out for the test split."),
    val_size: float = typer.Option(0.1, "--val-size", help="Share of each class used for validation (holdout)."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs per fold."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per training batch (the whole job's, with --nproc or torchrun)."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate."),
    weight_decay: float = typer.Option(5e-3, "--weight-decay", help="Adam weight decay."),
    patience: int = typer.Option(0, "--patience", help="Stop after this many epochs without a better validation loss (0: never)."),
    seed: int = typer.Option(0, "--seed", help="Random seed for the split, initial weights and augmentation."),
    rotate: Optional[float] = typer.Option(
        None, "--rotate", metavar="DEG",
        help="Random rotation range in degrees for training images (0: off); short for --augment rotate:DEG.",
    ),
    augment: Optional[list[str]] = typer.Option(
        None, "--augment", metavar="STEP",
        help="Training augmentation NAME[:ARG], repeatable: rotate, flip, crop, color, erase or a plugin's "
        "(default rotate:15; giving it replaces the default).",
    ),
    label_smoothing: float = typer.Option(
        0.0, "--label-smoothing", metavar="X", help="Label smoothing of the training loss (0 up to 1; 0: off)."
    ),
    schedule: str = typer.Option(
        "constant", "--schedule", metavar="NAME", help="Learning-rate schedule over the run: constant, cosine or onecycle."
    ),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Square input size (default: the architecture's, 224)."),
    finetune: bool = typer.Option(False, "--finetune", help="Pretrained backbones: train every layer, not just the head."),
    weights: Optional[Path] = typer.Option(None, "--weights", metavar="FILE", help="Pretrained weights file (sha256 checked)."),
    trust_weights: bool = typer.Option(False, "--trust-weights", help="Accept a --weights file whose sha256 is not the published one."),
    loader: str = typer.Option("auto", "--loader", metavar="NAME", help="Data loader: auto (the faster measured on this device, for training and for evaluation), dali or torch."),
    cache: str = typer.Option(
        "off", "--cache", metavar="auto|memory|disk|off",
        help="Keep decoded images after the first epoch: auto (device, RAM or disk, where they fit), memory, disk or off.",
    ),  # fmt: skip
    no_cache: bool = typer.Option(False, "--no-cache", help="Same as --cache off."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Loader worker processes / threads."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for torch (default: one per core; 1 on a machine other jobs share)."
    ),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    compile_mode: Optional[str] = typer.Option(
        None, "--compile", metavar="MODE",
        help="Compile the training and evaluation steps with torch.compile: default (a bare --compile) or reduce-overhead (CUDA graphs, CUDA only).",
    ),  # fmt: skip
    no_compile: bool = typer.Option(False, "--no-compile", help="Train eagerly (with --resume: though the run was compiled)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Run folder (default: runs/<time>-<arch>-<loss>)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run folder given with --out."),
    log: Optional[list[str]] = typer.Option(
        None, "--log", metavar="NAME", help="Experiment tracker, repeatable: tensorboard, mlflow or a plugin's.",
    ),
    unknown_identities: float = typer.Option(
        0.0, "--unknown-identities", metavar="FRACTION",
        help="Hold this share of the identities out of training as unknown people (open-set evaluation; seeded).",
    ),
    strangers: Optional[Path] = typer.Option(
        None, "--strangers", metavar="DIR", help="A folder of other people (one sub-folder each): unknowns for open-set evaluation."
    ),
    target_fpir: float = typer.Option(
        0.01, "--target-fpir", metavar="RATE", help="Calibrate the rejection threshold to name at most this share of unknown people."
    ),
    openset_score: str = typer.Option(
        "auto", "--openset-score", metavar="NAME", help="Score to reject by: auto (the best the run has), softmax, centroid or margin."
    ),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN", help="Continue an interrupted run from its last checkpoint."),
    nproc: Optional[int] = typer.Option(
        None, "--nproc", metavar="N", help="Train data-parallel on N processes of this machine (one per GPU): starts torchrun for you."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (implies --quiet)."),
) -> None:
    """Train a model; the run folder holds everything `facekit report` reads."""
    from facekit.cli.progress import ConsoleProgress
    from facekit.distributed import Distributed, launch
    from facekit.config import TrainConfig
    from facekit.engine import Trainer

    if nproc is not None:
        launch(nproc, _typed_arguments(ctx, leave_out="nproc"))
        return
    progress = ConsoleProgress(err_console if as_json else console, quiet=quiet or as_json)
    if no_compile and compile_mode is not None:
        raise UsageError("--no-compile and --compile contradict each other: give one of them")
    if resume is not None:
        # Only what was typed counts: the engine applies what a resume may change and refuses the rest.
        settings = {f.name for f in dataclasses.fields(TrainConfig)}
        given = {
            name: value for name, value in ctx.params.items()
            if name in settings and _typed(ctx, name)
        }  # fmt: skip
        if no_cache:
            given["cache"] = "off"
        if compile_mode is not None or no_compile:  # --no-compile: eager, though the run was compiled
            given["compile"] = compile_mode
        run_dir = Trainer.resume(resume, progress, **given)
    elif data is None:
        raise UsageError("--data DIR is required (a folder with one sub-folder per identity), or --resume RUN")
    else:
        config = TrainConfig(
            data=data, arch=arch, loss=loss, loss_options=loss_options, split=split, folds=folds, test_size=test_size, val_size=val_size,
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience, seed=seed,
            rotate=rotate, input_size=input_size, finetune=finetune, weights=weights, trust_weights=trust_weights,
            augment=augment, label_smoothing=label_smoothing, schedule=schedule,
            loader=loader, cache="off" if no_cache else cache, workers=workers, threads=threads, device=device,
            compile=compile_mode, out=out, force=force, unknown_identities=unknown_identities, strangers=strangers,
            target_fpir=target_fpir, openset_score=openset_score, log=log,
        )  # fmt: skip
        run_dir = Trainer(config, progress).train()
    if Distributed.from_env().is_main:  # under torchrun, rank 0 speaks for the job
        _print_result(run_dir, as_json)


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


# --------------------------------------------------------------------------- predict
@app.command()
def predict(
    run: Path = typer.Argument(
        ..., metavar="RUN|BUNDLE", help="A run folder made by `facekit train`, or a bundle made by `facekit export`."
    ),
    images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Image files or folders of images."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="How many identities to show per image."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", metavar="SCORE", help="Reject (name 'unknown') below this score instead of the run's calibrated threshold."
    ),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON."),
) -> None:
    """Who is in each image: the top-k identities, and 'unknown' below the run's threshold."""
    from facekit.predict import predict as predict_images

    notes: list[str] = []
    results = predict_images(run, images, top_k=top_k, device=device, threshold=threshold, notes=notes)
    for note in notes:
        err_console.print(f"[dim]Note: {rich_safe(note)}[/dim]", highlight=False)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    print_predictions(results)


def print_predictions(results: list[dict[str, Any]]) -> None:
    """Each image's decision line, then its top identities (``facekit predict``'s text output)."""
    for result in results:
        score = f"{result['score_name']} score {result['score']:.3f}"
        if result["threshold"] is not None:
            score += f" {'>=' if result['accepted'] else '<'} threshold {result['threshold']:.3f}"
        who = rich_safe(result["identity"]) if result["accepted"] else "[bold]unknown[/bold]"
        console.print(f"[bold]{rich_safe(result['file'])}[/bold]: {who} ({score})", highlight=False)
        table = Table(show_edge=False)
        table.add_column("rank", justify="right")
        table.add_column("identity")
        table.add_column("id", justify="right")
        table.add_column("probability", justify="right")
        for rank, guess in enumerate(result["top"], 1):
            table.add_row(str(rank), rich_safe(guess["name"]), str(guess["id"]), f"{guess['probability']:.3f}")
        console.print(table)


# ------------------------------------------------------------------------------ demo
@app.command()
def demo(
    data: Optional[Path] = typer.Option(None, "--data", metavar="DIR", help="Your own data set (default: a synthetic one made now)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Run folder (default: runs/<time>-baseline-plain)."),
    epochs: int = typer.Option(4, "--epochs", help="Training epochs."),
) -> None:
    """Train the baseline briefly, print its report and write a kernel map: facekit in a few minutes."""
    from facekit.cli.progress import ConsoleProgress
    from facekit.demo import run_demo

    run_demo(data=data, out=out, epochs=epochs, console=console, progress=ConsoleProgress(console))


# --------------------------------------------------------------------------- plugins
@app.command()
def plugins(
    all_: bool = typer.Option(False, "--all", help="Include facekit's built-in plugins."),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List installed plugins: package, version and what each registers."""
    from facekit.plugins import get_plugins

    infos = [p for p in get_plugins().plugins if all_ or not p.builtin]
    rows = [info.to_dict() for info in infos]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("No third-party plugins installed (`facekit plugins --all` shows the built-ins).")
        return
    table = Table("plugin", "package", "version", "registers")
    for row in rows:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items())
        if "register_commands" in row["hooks"]:
            registers = "; ".join(filter(None, [registers, "commands"]))
        table.add_row(*map(rich_safe, (row["name"], row["package"] + (" (built-in)" if row["builtin"] else ""), row["version"], registers)))
    console.print(table)


def _mount_subcommands() -> None:
    from facekit.cli import data_cmd, embed_cmd, enroll_cmd, export_cmd, report_cmd

    app.add_typer(data_cmd.app, name="data")
    app.command("embed")(embed_cmd.embed)
    app.command("export")(export_cmd.export)
    app.command("report")(report_cmd.report)
    app.command("kernels")(report_cmd.kernels)
    app.command("enroll")(enroll_cmd.enroll)


_mount_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: load plugins (and their commands), then run."""
    from facekit.plugins import PluginSet, reset_plugins, strict_from_env

    warnings.showwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else argv
    try:
        plugin_set = PluginSet(strict=("--strict" in argv) or strict_from_env())
        reset_plugins(plugin_set)
        plugin_set.add_commands(app)
    except FacekitError as exc:
        typer.echo(f"Error: {_scrubbed(str(exc))}", err=True)
        raise SystemExit(exc.exit_code) from None
    try:
        app(args=argv, prog_name="facekit")
    finally:
        _quit_on_late_interrupt()


def _quit_on_late_interrupt() -> None:
    """Once the command has ended, Ctrl-C quits at once, quietly (exit 130).

    Python's shutdown still runs libraries' exit handlers (DALI collects garbage and stops its
    pipelines there); a KeyboardInterrupt inside one of them prints a traceback the user can do
    nothing about. What the command wrote is complete by now (every file is written atomically).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def quit_now(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)

    signal.signal(signal.SIGINT, quit_now)
