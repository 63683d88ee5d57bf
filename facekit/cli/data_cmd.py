"""`facekit data ...`: check a data set folder, or make a synthetic one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from facekit.cli.errors import FacekitGroup
from facekit.cli.help import ReadableTyper

# Its own errors group too: the same one line and exit code when the group runs on its own (tests, embedding).
app = ReadableTyper(
    cls=FacekitGroup,
    help="Inspect a data set folder (one sub-folder per identity) or make a synthetic one.",
    no_args_is_help=True,
)


@app.command()
def check(
    data: Path = typer.Argument(..., metavar="DIR", help="Data set folder: one sub-folder of images per identity."),
    split: str = typer.Option("holdout", "--split", metavar="NAME", help="Split strategy to check the identities against: holdout, kfold or one a plugin registers."),
    folds: int = typer.Option(5, "--folds", help="Number of folds, for splits that make several (kfold)."),
    test_size: float = typer.Option(0.2, "--test-size", help="Test fraction of the data set."),
    val_size: float = typer.Option(0.1, "--val-size", help="Validation fraction (holdout)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
) -> None:
    """Decode every image once; list bad files, empty or too-small identities, and the class imbalance.

    Exits 1 when nothing usable remains. The index is cached, so training does not decode again.
    """
    from facekit.data.check import check_dataset, render_check_report

    report = check_dataset(data, split=split, folds=folds, test_size=test_size, val_size=val_size)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render_check_report(report, Console(highlight=False))
    if not report.usable:
        raise typer.Exit(1)


@app.command()
def synth(
    out: Path = typer.Argument(..., metavar="OUT", help="Folder to create (must be empty unless --force)."),
    identities: int = typer.Option(5, "--identities", help="Number of identities (sub-folders)."),
    per_identity: int = typer.Option(8, "--per-identity", help="Images per identity."),
    size: int = typer.Option(64, "--size", help="Image width and height in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed makes the same images."),
    fmt: str = typer.Option("png", "--format", metavar="FORMAT", help="Image format: png, jpg, bmp or ppm."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty OUT."),
) -> None:
    """Make a small synthetic face data set (drawn faces that a CNN can tell apart)."""
    from facekit.data.synth import make_synthetic_dataset

    path = make_synthetic_dataset(out, identities, per_identity, size, seed, fmt, force=force)
    print(f"wrote {identities} identities x {per_identity} images ({size}x{size} {fmt}) to {path}", file=sys.stdout)
