"""``facekit export``: a run's kept model as a bundle (ONNX or TorchScript) that predicts without training tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def export(
    run: Path = typer.Argument(..., metavar="RUN", help="A run folder made by `facekit train`."),
    format: str = typer.Option("onnx", "--format", metavar="onnx|torchscript", help="onnx (runs without torch) or torchscript."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Bundle folder (default: RUN/bundle-FORMAT); an earlier bundle there is replaced."),
    as_json: bool = typer.Option(False, "--json", help="Print the bundle's manifest as JSON."),
) -> None:
    """Export the run's kept model, classes and preprocessing as a bundle for `facekit predict BUNDLE`."""
    from facekit.export import export_run

    # Capturing and checking a large network takes up to a minute on a small CPU: say what is going on.
    with Console(stderr=True).status(f"exporting {run} to {format} (capture, check against torch)", spinner="dots"):
        result = export_run(run, format, out)
    if as_json:
        typer.echo(json.dumps({"bundle": str(result.path)} | result.manifest, indent=2))
        return
    manifest = result.manifest
    opset = f", opset {manifest['opset']}" if manifest.get("opset") else ""
    console = Console()
    console.print(
        f"[bold]bundle[/bold] {result.path}  {manifest['format']}{opset}, {manifest['architecture']}, "
        f"{manifest['classes']} classes, outputs {' + '.join(manifest['outputs'])}, {result.size_bytes / 1e6:.1f} MB",
        highlight=False,
    )
    console.print(f"next: facekit predict {result.path} IMAGE...", style="dim", highlight=False)
