"""facekit's own reporters, registered through the ``facekit`` entry-point group like any plugin."""

from __future__ import annotations

from pathlib import Path

from facekit import hookimpl
from facekit.api import ReporterSpec
from facekit.report import ReportContext, rich_table


def render_tables(context: ReportContext) -> None:
    """Top-k and worst-k classes, averages, summary, confusions and (k-fold) the folds."""
    report = context.report
    context.console.print(f"[bold]{report.heading()}[/bold]")
    for table in report.tables():
        context.console.print()
        context.console.print(rich_table(table, context.console.width))
        if table.caption:
            context.console.print(f"[dim]{table.caption}[/dim]")


def render_plots(context: ReportContext) -> list[Path]:
    """Loss curves, the confusion matrix of the most confused classes, score vs training images."""
    from facekit.plots import report_figures  # matplotlib is slow to import; only this reporter needs it

    written = report_figures(context.report, context.out_dir)
    context.written.extend(written)  # `facekit report` lists them after every reporter has run
    return written


@hookimpl
def register_reporters(register):
    register(ReporterSpec("table", render_tables, "Per-class tables, averages and confusions.", default=True))
    register(ReporterSpec(
        "plots", render_plots, "Loss curves, confusion matrix, score vs training images (PNG).", default=True,
    ))
