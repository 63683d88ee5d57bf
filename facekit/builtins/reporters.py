"""facekit's own reporters, registered through the ``facekit`` entry-point group like any plugin."""

from __future__ import annotations

from pathlib import Path

from facekit import hookimpl
from facekit.api import ReporterSpec
from facekit.report import ReportContext, rich_table
from facekit.text import rich_safe


def render_tables(context: ReportContext) -> None:
    """Top-k and worst-k classes, averages, summary, confusions and (k-fold) the folds."""
    report = context.report
    context.console.print(f"[bold]{rich_safe(report.heading())}[/bold]")
    for table in report.tables():
        context.console.print()
        context.console.print(rich_table(table, context.console.width))
        if table.caption:
            context.console.print(f"[dim]{rich_safe(table.caption)}[/dim]")


def render_plots(context: ReportContext) -> list[Path]:
    """Loss curves, the confusion matrix of the most confused classes, score vs training images."""
    from facekit.plots import report_figures  # matplotlib is slow to import; only this reporter needs it

    written = report_figures(context.report, context.out_dir)
    if context.report.openset:
        written.append(plot_openset(context.run, context.out_dir / "det_curve.png", title=f"DET curve: {context.report.name}"))
    context.written.extend(written)  # `facekit report` lists them after every reporter has run
    return written


def plot_openset(run, out_path: Path, *, title: str) -> Path:
    """The DET curve of every score an open-set run measured, its calibrated thresholds marked."""
    from facekit import openset, plots
    from facekit.openset_training import read_test_scores

    data, arrays = openset.OpenSet.read(run.path), read_test_scores(run.path)
    curves, marks = {}, {}
    for name, calibration in data.calibration.items():
        known, correct, unknown = arrays[f"{name}_known"], arrays[f"{name}_correct"], arrays[f"{name}_unknown"]
        if not known.size or not unknown.size:
            continue
        curve = openset.det_curve(known, unknown, correct)
        curves[name] = (curve.fpir, curve.fnir)
        marks[name] = openset.rates_at(float(calibration["threshold"]), known, unknown, correct)
    return plots.plot_det_curves(curves, out_path, marks=marks, default=data.score, title=title)


@hookimpl
def register_reporters(register):
    register(ReporterSpec("table", render_tables, "Per-class tables, averages and confusions.", default=True))
    register(ReporterSpec(
        "plots", render_plots, "Loss curves, confusion matrix, score vs training images, DET curve (PNG).", default=True,
    ))
