"""The Rich front end of ``facekit align``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from facekit.api import FacekitError

LIST_LIMIT = 20


def align_command(src: Path, out: Path, **kwargs) -> dict:
    from facekit_dlib.align import MANIFEST, run_align  # noqa: PLC0415

    console = Console()
    err = Console(stderr=True)
    try:
        def progress() -> Progress:
            return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console)

        m = run_align(src, out, progress=progress, **kwargs)
    except FacekitError as exc:
        err.print(f"[red]Error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(getattr(exc, "exit_code", 1)) from None
    except KeyboardInterrupt:
        err.print("interrupted: chips written so far are kept; run again to resume")
        raise typer.Exit(130) from None

    t = Table(title=f"facekit align: {src} -> {out}")
    t.add_column("", style="bold")
    t.add_column("images", justify="right")
    t.add_row("identities", str(m["identities"]))
    t.add_row("images found", str(m["images"]))
    t.add_row("already aligned (skipped)", str(m["skipped_existing"]))
    t.add_row("aligned (face detected)", str(m["aligned"]))
    t.add_row("no face found (fixed-box fallback)", str(m["fallback"]))
    t.add_row("unreadable (skipped)", str(m["unreadable"]))
    if m["failed"]:
        t.add_row("failed", str(m["failed"]))
    t.add_row("chips in output", str(m["chips"]))
    t.add_row("seconds", f"{m['seconds']:.1f}")
    console.print(t)
    _listing(console, "no face found, fixed-box fallback used", m["no_face_fallback"])
    _listing(console, "unreadable, skipped", [f"{k}  ({v})" for k, v in m["unreadable_files"].items()])
    _listing(console, "failed", [f"{k}  ({v})" for k, v in m["failed_files"].items()])
    if m["ignored_top_level_files"]:
        _listing(console, "ignored (not inside an identity folder)", m["ignored_top_level_files"])
    console.print(f"manifest: {Path(out) / MANIFEST}", highlight=False)
    return m


def _listing(console: Console, title: str, items: list[str]) -> None:
    if not items:
        return
    console.print(f"[bold]{title}[/bold] ({len(items)}):")
    for item in items[:LIST_LIMIT]:
        console.print(f"  {item}", highlight=False, markup=False)
    if len(items) > LIST_LIMIT:
        console.print(f"  ... and {len(items) - LIST_LIMIT} more (see the manifest)")
