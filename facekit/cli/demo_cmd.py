"""``facekit demo``: a synthetic data set, a short training, its report and a kernel map."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facekit.cli.output import console


def demo(
    data: Optional[Path] = typer.Option(None, "--data", metavar="DIR", help="Your own data set (default: a synthetic one made now)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Run folder (default: runs/<time>-baseline-plain)."),
    epochs: int = typer.Option(4, "--epochs", help="Training epochs."),
) -> None:
    """Train the baseline briefly, print its report and write a kernel map: facekit in a few minutes."""
    from facekit.cli.progress import ConsoleProgress
    from facekit.demo import run_demo

    run_demo(data=data, out=out, epochs=epochs, console=console, progress=ConsoleProgress(console))
