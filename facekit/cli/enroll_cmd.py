"""``facekit enroll``: add people to a run's gallery (or remove one) without retraining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from facekit.errors import UsageError


def enroll(
    run: Path = typer.Argument(..., metavar="RUN", help="An open-set run folder (trained with --unknown-identities or --strangers)."),
    folder: Optional[Path] = typer.Argument(None, metavar="DIR", help="One sub-folder of a few photos per person to add."),
    remove: Optional[str] = typer.Option(None, "--remove", metavar="NAME", help="Remove this enrolled person instead."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the people enrolled as JSON."),
) -> None:
    """Add people to a run's gallery: `facekit predict` then names them, and still rejects strangers."""
    from facekit.enroll import enroll as enroll_people
    from facekit.enroll import remove as remove_person

    console = Console()
    if (folder is None) == (remove is None):
        raise UsageError("give DIR (people to enroll) or --remove NAME, one of them: facekit enroll RUN DIR")
    if remove is not None:
        remove_person(run, remove)
        console.print(f"removed {remove} from {run}", highlight=False)
        return
    people = enroll_people(run, folder, device=device)
    if as_json:
        typer.echo(json.dumps(people, indent=2))
        return
    for person in people:
        console.print(f"enrolled {person['name']} ({person['images']} photo{'s' if person['images'] != 1 else ''})", highlight=False)
