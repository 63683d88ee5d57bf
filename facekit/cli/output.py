"""The consoles every command prints to, and warnings as one line on the error console."""

from __future__ import annotations

from rich.console import Console

from facekit.text import rich_safe

console = Console()
err_console = Console(stderr=True)


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(f"[yellow]Warning:[/yellow] {rich_safe(message)}", highlight=False, soft_wrap=True)  # one line, however long
