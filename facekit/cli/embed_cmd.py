"""``facekit embed``: the embeddings of images with a trained run, written as FILE.npy and FILE.json.

Thin: the work lives in :func:`facekit.embeddings.embed_images`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def embed(
    run: Path = typer.Argument(..., metavar="RUN", help="A run folder made by `facekit train`."),
    images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Image files or folders of images (searched recursively, sorted)."),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="Writes FILE.npy (float32, one row per image) and FILE.json (the files, in row order)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, metavar="N", help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    force: bool = typer.Option(False, "--force", help="Replace FILE.npy and FILE.json if they exist."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON (FILE.json's content, less the file list)."),
) -> None:
    """Write each image's embedding (the input of the model's final classifier), not normalized."""
    from facekit.embeddings import embed_images, embedding_paths

    summary = embed_images(run, images, out, device=device, batch_size=batch_size, force=force)
    written = {key: value for key, value in summary.items() if key != "files"}
    if as_json:
        typer.echo(json.dumps(written, indent=2))
        return
    npy, names = embedding_paths(out)
    console.print(f"{summary['count']} embeddings of {summary['dim']} dimensions: {npy} (files in row order: {names})", highlight=False)
