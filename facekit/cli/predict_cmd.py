"""``facekit predict``: who is in each image, by a trained run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from facekit.cli.output import console, err_console
from facekit.text import rich_safe


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
