"""``facekit report`` and ``facekit kernels``: read a run folder, print tables, write files.

Both are thin: the work lives in facekit.report, facekit.builtins.reporters and facekit.kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from facekit.errors import UsageError
from facekit.report import (
    REPORT_DIR,
    ReportContext,
    build_report,
    check_format,
    compare_runs,
    comparison_json,
    print_written,
    render_report,
    report_json,
    rich_table,
    select_reporters,
    write_comparison,
)
from facekit.runs import RUNS_DIR, Run


def report(
    runs: Optional[list[Path]] = typer.Argument(
        None, metavar="[RUN]...", help="Run folder(s); default: the latest under --runs-dir. Two or more: compared."
    ),
    top: int = typer.Option(5, "--top", metavar="K", help="Show the K best classes by aggregated score."),
    worst: int = typer.Option(5, "--worst", metavar="K", help="Show the K worst classes by aggregated score."),
    confusions: int = typer.Option(10, "--confusions", metavar="K", help="Show the K most common confusions."),
    format: Optional[str] = typer.Option(
        None, "--format", metavar="FORMAT", help="Also write report.md / report.json / report.csv: markdown, json or csv."
    ),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Folder for files (default: RUN/report/)."),
    compare: bool = typer.Option(
        False, "--compare", help="Put the runs' averages side by side, in the order given (--compare A B C)."
    ),
    reporter: Optional[list[str]] = typer.Option(
        None, "--reporter", metavar="NAME",
        help="Run only these reporters (repeat the option; default: all default reporters, none with --json).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the whole report (or comparison) as JSON on stdout, and nothing else there."
    ),
    html: Optional[Path] = typer.Option(
        None, "--html", metavar="FILE",
        help="Also write the report as one self-contained web page: plots, a sortable table, the worst classes' faces.",
    ),
    runs_dir: Path = typer.Option(RUNS_DIR, "--runs-dir", metavar="DIR", help="Where to look for the latest run."),
) -> None:
    """Per-class metrics of a run's test predictions: best and worst classes, confusions, plots.

    Also averages and per-fold results. Never retrains: it reads RUN/predictions.npz."""
    fmt = check_format(format)
    # With --json, stdout carries the JSON alone: what reporters print and the list of files
    # written go to stderr.
    console = Console(stderr=True) if as_json else Console()
    runs = list(runs or [])
    if compare and len(runs) < 2:
        raise UsageError("--compare needs two or more run folders: facekit report --compare RUN_A RUN_B")
    if html is not None and len(runs) > 1:
        raise UsageError("--html reports one run; drop --html to compare runs, or give one RUN")
    if html is not None:
        from facekit.report_html import check_html_target

        check_html_target(html)  # before any reporter writes a file
    if len(runs) > 1:
        _compare(runs, fmt, out, console, as_json)
        return

    opened = Run.open(runs[0] if runs else None, runs_dir)
    # --json replaces the tables; reporters run there only when named.
    selected = select_reporters(reporter) if reporter or not as_json else []  # bad names fail before any work
    context = ReportContext(
        run=opened,
        report=build_report(opened, top=top, worst=worst, confusions=confusions),
        console=console,
        out_dir=out or opened.path / REPORT_DIR,
        format=fmt,
    )
    written = render_report(context, selected)
    if html is not None:
        from facekit.report_html import write_html_report

        written.append(write_html_report(context, html))
    if as_json:
        typer.echo(report_json(context.report), nl=False)
    print_written(console, written)


def _compare(paths: list[Path], fmt: Optional[str], out: Optional[Path], console: Console, as_json: bool) -> None:
    comparison = compare_runs([Run.open(path) for path in paths])
    if as_json:
        typer.echo(comparison_json(comparison), nl=False)
    else:
        console.print(rich_table(comparison.table(), console.width))
    if fmt:
        print_written(console, [write_comparison(comparison, fmt, out or Path("."))])


def kernels(
    run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Run folder; default: the latest under --runs-dir."),
    layer: int = typer.Option(1, "--layer", metavar="N", help="Which conv layer to draw, 1-based (see --list)."),
    list_: bool = typer.Option(False, "--list", help="List the model's conv layers and exit."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Folder for the PNGs (default: RUN/report/)."),
    runs_dir: Path = typer.Option(RUNS_DIR, "--runs-dir", metavar="DIR", help="Where to look for the latest run."),
) -> None:
    """Draw a conv layer's kernels (intensity = weight; RGB too for a 3-channel first layer)."""
    from facekit.kernels import conv_layers, write_kernel_maps

    opened = Run.open(run, runs_dir)
    model = opened.load_model()
    console = Console()
    if list_:
        console.print(conv_layer_table(conv_layers(model), opened))
        return
    print_written(console, write_kernel_maps(model, layer, out or opened.path / REPORT_DIR))


def conv_layer_table(layers: list, run: Run) -> Table:
    if not layers:
        raise UsageError(f"the model of {run.path} has no Conv2d layers")
    table = Table(title=f"Conv layers of {run.path.name} ({run.config.get('arch')})", title_justify="left")
    for header in ("Layer", "Name", "In", "Out", "Kernel", "Stride", "Groups"):
        table.add_column(header, justify="left" if header == "Name" else "right")
    for index, name, module in layers:
        table.add_row(
            str(index), name, str(module.in_channels), str(module.out_channels),
            "x".join(map(str, module.kernel_size)), "x".join(map(str, module.stride)), str(module.groups),
        )
    return table
