"""Every error a command raises becomes one line and its exit code, here and nowhere else.

The app's group (:class:`FacekitGroup`) wraps every command, plugins' included: facekit's errors
(``UsageError`` exits 2, ``FacekitError`` 1), a file the operating system refused, Ctrl-C (with
the command that continues an interrupted training) and any exception nobody foresaw.
"""

from __future__ import annotations

import os
import shlex
import sys

import typer

from facekit.cli.help import ReadableGroup
from facekit.errors import FacekitError
from facekit.text import printable


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
            command = getattr(getattr(self, "_invoked", (None, []))[0], "name", None)
            typer.echo(
                f"Error: {' '.join(filter(None, ['facekit', command]))} needs the training tools "
                f"({missing} is not installed): pip install 'facekit[train]'",
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


def exit_with(exc: FacekitError) -> None:
    """Outside a command (loading plugins before the app runs): the same one line, then exit."""
    typer.echo(f"Error: {_scrubbed(str(exc))}", err=True)
    raise SystemExit(exc.exit_code) from None


def quit_on_late_interrupt() -> None:
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
