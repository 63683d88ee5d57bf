"""Every error a command raises becomes one line and its exit code, here and nowhere else.

The app's group (:class:`FacekitGroup`) wraps every command, plugins' included: facekit's errors
(``UsageError`` exits 2, ``FacekitError`` 1), a file the operating system refused, Ctrl-C (with
the command that continues an interrupted training) and any exception nobody foresaw.
"""

from __future__ import annotations

import os
import shlex

import typer

from facekit.cli.help import ReadableGroup
from facekit.errors import FacekitError


DEBUG_ENV = "FACEKIT_DEBUG"


class FacekitGroup(ReadableGroup):
    """Turns a FacekitError raised by any command, plugins' included, into one line and its exit code.

    So does a file the operating system refused (a full disk, a read-only folder: exit 1), Ctrl-C,
    which names the command that continues an interrupted training, and any other exception
    (exit 1; ``FACEKIT_DEBUG=1`` shows its traceback).
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FacekitError as exc:
            typer.echo(f"Error: {_scrubbed(str(exc))}{_blame(exc)}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            from facekit.files import os_error_line

            typer.echo(f"Error: {os_error_line(exc)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            run_dir = getattr(exc, "run_dir", None)
            hint = f" Continue with: facekit train --resume {shlex.quote(str(run_dir))}" if run_dir else ""
            typer.echo(f"Interrupted.{hint}", err=True)
            raise typer.Exit(130) from None
        except (typer.exceptions.TyperException, typer.Exit, typer.Abort):
            raise  # the command line's own usage errors and exits
        except Exception as exc:
            # A failure nobody foresaw (facekit's or a plugin's): still one line, and the traceback
            # for a bug report when asked for.
            if os.environ.get(DEBUG_ENV):
                raise
            where = _scrubbed(str(exc)).splitlines()[0] if str(exc).strip() else ""
            culprit = _blame(exc)
            typer.echo(
                f"Error: unexpected {exc.__class__.__name__}: {where}{culprit} "
                f"(rerun with {DEBUG_ENV}=1 for the traceback, and report it if "
                f"{'the plugin' if culprit else 'facekit'} is at fault)",
                err=True,
            )
            raise typer.Exit(1) from None


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
