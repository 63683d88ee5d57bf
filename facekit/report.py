"""A run's test report: per-class tables, averages, confusions, folds; and runs side by side.

A report reads the run folder (``predictions.npz`` and the JSON files) through
:class:`facekit.runs.Run`; it never retrains or re-infers. The tables follow the study's layout
(Tables 3-5: top-k and worst-k classes with their id, then averages over classes) and are built
once as plain :class:`TableData`, then rendered to Rich, Markdown, JSON or CSV.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from facekit.errors import FacekitError, UsageError
from facekit.metrics import METRIC_LABELS, METRICS, STUDY_METRICS, ClassMetrics, Confusion, per_class_metrics
from facekit.files import atomic_write
from facekit.openset_training import openset_summary
from facekit.runs import Run

REPORT_DIR = "report"
FORMATS = ("markdown", "json", "csv")
FORMAT_SUFFIX = {"markdown": ".md", "json": ".json", "csv": ".csv"}
CSV_DECIMALS = 4  # scores in [0, 1]: 4 decimals tell apart 1 error in 10,000 samples


def number(value: float | None) -> str:
    """Three decimals, or ``-`` for a value that is not defined (e.g. a class with no test samples)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}"


@dataclass(frozen=True)
class TableData:
    """One table, renderer-neutral: cells are already formatted strings."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    numeric: tuple[bool, ...]  # right-aligned columns
    caption: str = ""


@dataclass(frozen=True, eq=False)
class Report:
    """Everything a report shows about one run's test predictions."""

    run: Run
    metrics: ClassMetrics
    train_counts: np.ndarray  # training images per class (the kept model's fold)
    top: list[int]  # class ids, best aggregated score first
    worst: list[int]  # class ids, worst aggregated score first
    confusions: list[Confusion]
    openset: dict[str, Any] | None = None  # facekit.openset_training.openset_summary: open-set runs only

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def classes(self) -> list[str]:
        return self.run.classes

    def class_row(self, class_id: int) -> dict[str, Any]:
        return self.class_rows([class_id])[0]

    def class_rows(self, class_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One dict per class (all classes by id when None); metrics not defined are None.

        Built column by column, so 100,000 classes take a fraction of a second."""
        m = self.metrics
        ids = np.arange(m.num_classes) if class_ids is None else np.asarray(class_ids, dtype=np.int64)
        columns = {
            "support": m.support[ids].tolist(),
            "predicted": m.predicted[ids].tolist(),
            "train_images": np.asarray(self.train_counts)[ids].tolist(),
            **{name: [None if math.isnan(v) else v for v in m.metric(name)[ids].tolist()] for name in METRICS},
        }
        return [
            {"id": class_id, "class": self.classes[class_id], **{key: values[row] for key, values in columns.items()}}
            for row, class_id in enumerate(ids.tolist())
        ]

    def averages(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "macro": {name: m.macro(name) for name in METRICS},
            "weighted": {name: m.weighted(name) for name in METRICS},
            "overall_accuracy": m.overall_accuracy,
            "balanced_accuracy": m.balanced_accuracy,
            "macro_f1": m.macro("f1"),
        }

    @property
    def kept_fold(self) -> dict[str, Any] | None:
        """The kept model's best validation figures from folds.json, if recorded."""
        for fold in self.run.folds.get("folds", []):
            if int(fold["fold"]) == self.run.kept_fold:
                return fold
        return None

    def to_dict(self) -> dict[str, Any]:
        config = self.run.config
        return {
            "run": str(self.run.path),
            "arch": config.get("arch"),
            "loss": config.get("loss"),
            "split": config.get("split"),
            "test_images": self.metrics.total,
            "classes": self.metrics.num_classes,
            "unmeasured_classes": [self.classes[i] for i in self.metrics.unmeasured],
            "never_predicted_classes": [self.classes[i] for i in self.metrics.never_predicted],
            "averages": self.averages(),
            "top": self.class_rows(self.top),
            "worst": self.class_rows(self.worst),
            "confusions": [self._confusion_row(c) for c in self.confusions],
            "folds": self.run.folds,
            "per_class": self.class_rows(),
            "openset": _defined(self.openset),
        }

    def _confusion_row(self, confusion: Confusion) -> dict[str, Any]:
        return {
            "true_id": confusion.true,
            "true": self.classes[confusion.true],
            "predicted_id": confusion.predicted,
            "predicted": self.classes[confusion.predicted],
            "count": confusion.count,
            "share": confusion.share,
        }

    # Tables --------------------------------------------------------------------------------

    def ranking_table(self, title: str, class_ids: Sequence[int]) -> TableData:
        """The study's Tables 3 and 4: class, id, support and the five per-class metrics."""
        columns = ("#", "Class", "Id", "Support", *(METRIC_LABELS[n] for n in STUDY_METRICS))
        rows = [
            (str(rank), row["class"], str(row["id"]), str(row["support"]), *(number(row[n]) for n in STUDY_METRICS))
            for rank, row in enumerate(self.class_rows(class_ids), start=1)
        ]
        return TableData(title, columns, rows, (True, False, True, True, *[True] * len(STUDY_METRICS)))

    def averages_table(self) -> TableData:
        """The study's Table 5: every metric averaged over classes, plain and support-weighted."""
        averages = self.averages()
        rows = [
            (METRIC_LABELS[name], number(averages["macro"][name]), number(averages["weighted"][name]))
            for name in METRICS
        ]
        return TableData(
            "Averages over classes",
            ("Metric", "Macro", "Weighted"),
            rows,
            (False, True, True),
            caption="Accuracy per class = recall (the study's definition), so macro accuracy = balanced accuracy.",
        )

    def summary_table(self) -> TableData:
        m = self.metrics
        rows = [
            ("Test images", str(m.total)),
            ("Classes measured", f"{int(m.measured.sum())} of {m.num_classes}"),
            ("Overall accuracy", number(m.overall_accuracy)),
            ("Balanced accuracy", number(m.balanced_accuracy)),
            ("Macro F1", number(m.macro("f1"))),
        ]
        kept = self.kept_fold
        if kept is not None:
            rows.append(("Validation loss (kept model)", number(kept.get("val_loss"))))
        if m.never_predicted.size:
            rows.append(("Never predicted", self._names(m.never_predicted)))
        if m.unmeasured.size:
            rows.append(("No test images (shown as -)", self._names(m.unmeasured)))
        return TableData("Summary", ("", ""), rows, (False, False))

    def _names(self, class_ids: np.ndarray, limit: int = 8) -> str:
        names = [self.classes[i] for i in class_ids[:limit]]
        more = f" and {class_ids.size - limit} more" if class_ids.size > limit else ""
        return ", ".join(names) + more

    def confusions_table(self) -> TableData:
        rows = [
            (f"{self.classes[c.true]} ({c.true})", f"{self.classes[c.predicted]} ({c.predicted})",
             str(c.count), number(c.share))
            for c in self.confusions
        ]
        return TableData(
            f"Most common confusions (top {len(self.confusions)})",
            ("True class (id)", "Predicted as (id)", "Count", "Share of true class"),
            rows,
            (False, False, True, True),
        )

    def folds_table(self) -> TableData | None:
        """Every fold's best validation figures and their mean ± std (k-fold runs only)."""
        folds = self.run.folds
        if len(folds.get("folds", [])) < 2:
            return None
        rows = [
            (str(f["fold"]) + (" (kept)" if int(f["fold"]) == self.run.kept_fold else ""),
             str(f.get("best_epoch", "-")), number(f.get("val_loss")), number(f.get("val_acc")))
            for f in folds["folds"]
        ]
        rows.append((
            "mean ± std", "",
            f"{number(folds.get('val_loss_mean'))} ± {number(folds.get('val_loss_std'))}",
            f"{number(folds.get('val_acc_mean'))} ± {number(folds.get('val_acc_std'))}",
        ))
        return TableData(
            "Cross-validation folds", ("Fold", "Best epoch", "Val loss", "Val acc"), rows,
            (False, True, True, True),
            caption="The model with the lowest validation loss is kept and measured on the test split.",
        )

    def tables(self) -> list[TableData]:
        """All tables in reading order; ``--top 0`` / ``--worst 0`` / ``--confusions 0`` hide theirs."""
        tables = []
        if self.top:
            tables.append(self.ranking_table(f"Top {len(self.top)} classes by aggregated score", self.top))
        if self.worst:
            tables.append(self.ranking_table(f"Worst {len(self.worst)} classes by aggregated score", self.worst))
        tables += [self.averages_table(), self.summary_table()]
        if self.confusions:
            tables.append(self.confusions_table())
        folds = self.folds_table()
        openset = openset_table(self.openset) if self.openset else None
        return tables + ([folds] if folds else []) + ([openset] if openset else [])

    def heading(self) -> str:
        config = self.run.config
        return (
            f"{self.name}: {config.get('arch')} · loss {config.get('loss')} · split {config.get('split')}"
            f" · {self.metrics.total} test images, {self.metrics.num_classes} classes"
        )


def openset_table(summary: dict[str, Any]) -> TableData:
    """One column per score of an open-set run: rank-1, FNIR at each FPIR, TAR at each FAR, and the
    rates at the run's calibrated threshold (docs/openset.md defines them)."""
    from facekit.openset import FAR_POINTS, FPIR_POINTS

    scores = summary["scores"]
    figures = list(scores.values())

    def row(label: str, value: Callable[[dict[str, Any]], Any], shown: Callable[[Any], str] = number) -> tuple[str, ...]:
        return (label, *(shown(value(f)) for f in figures))

    rows = [row("Rank-1 (closed set)", lambda f: f["rank1"])]
    rows += [row(f"FNIR at FPIR {x:g}", lambda f, x=x: f["fnir_at_fpir"][f"{x:g}"]) for x in FPIR_POINTS]
    rows += [row(f"TAR at FAR {x:g}", lambda f, x=x: f.get("tar_at_far", {}).get(f"{x:g}")) for x in FAR_POINTS]
    rows += [
        row("Threshold (calibrated)", lambda f: f.get("at_threshold", {}).get("threshold"),
            lambda v: "-" if v is None else f"{v:.4g}"),
        row("FPIR at the threshold", lambda f: f.get("at_threshold", {}).get("fpir")),
        row("FNIR at the threshold", lambda f: f.get("at_threshold", {}).get("fnir")),
    ]  # fmt: skip
    columns = tuple(name + (" (default)" if name == summary["score"] else "") for name in scores)
    return TableData(
        "Open-set identification (test split)",
        ("Figure", *columns),
        rows,
        (False, *[True] * len(columns)),
        caption=(
            f"{figures[0]['known']} known and {figures[0]['unknown']} unknown test images. FNIR counts a known face "
            f"rejected or misnamed; '-': too few unknown images (or pairs) to measure that rate. TAR: pairs of known "
            f"test images by embedding cosine (the same for every score). 'enrolled': the centroid score with every "
            f"class as if enrolled from one training photo (the threshold facekit enroll's people get). The "
            f"threshold is calibrated on validation "
            f"data for FPIR {summary['target_fpir']:g}."
            + "".join(f" Note ({name}): {f['calibration']['note']}." for name, f in scores.items() if f.get("calibration", {}).get("note"))
        ),
    )


def _defined(value: Any) -> Any:
    """``value`` with every NaN as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _defined(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_defined(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def build_report(run: Run, *, top: int = 5, worst: int = 5, confusions: int = 10) -> Report:
    """Per-class metrics of ``run``'s saved test predictions, with its rankings and confusions."""
    for name, value in (("--top", top), ("--worst", worst), ("--confusions", confusions)):
        if value < 0:
            raise UsageError(f"{name} must be 0 or more, not {value}")
    y_true, y_pred = run.test_labels()
    metrics = per_class_metrics(y_true, y_pred, len(run.classes))
    return Report(
        run=run,
        metrics=metrics,
        train_counts=run.train_counts(),
        top=metrics.top_k(top),
        worst=metrics.worst_k(worst),
        confusions=metrics.confusions(confusions),
        openset=openset_summary(run.path),
    )


@dataclass
class ReportContext:
    """What a reporter (:class:`facekit.specs.ReporterSpec`) gets: the report and where to put things."""

    run: Run
    report: Report
    console: Console
    out_dir: Path  # files go here (RUN/report/ or --out)
    format: str | None = None  # --format, for reporters that write documents
    written: list[Path] = field(default_factory=list)  # files reporters wrote, for the summary

    @property
    def metrics(self) -> ClassMetrics:
        return self.report.metrics


def select_reporters(names: Sequence[str] | None = None) -> list:
    """The named reporters (unknown names are usage errors), or every default one."""
    from facekit.plugins import reporters

    registry = reporters()
    if names:
        return [registry.get(name) for name in names]
    return [spec for spec in registry.values() if spec.default]


def render_report(context: ReportContext, reporter_specs: Sequence) -> list[Path]:
    """Run the reporters on ``context`` (and write ``context.format``'s document); returns the files written."""
    from facekit.plugins import reporters

    for spec in reporter_specs:
        try:
            spec.render(context)
        except (KeyboardInterrupt, OSError):
            raise  # the user's Ctrl-C; a full disk or read-only folder, which the CLI words itself
        except Exception as exc:
            # Name the reporter and the plugin behind it: a crash deep in someone's plotting code
            # says nothing about which of the installed reporters to blame.
            owner = reporters().owner_label.get(spec.name, "")
            where = f"reporter {spec.name!r}" + (f" ({owner})" if owner else "")
            detail = str(exc).splitlines()[0] if str(exc) else ""
            if isinstance(exc, FacekitError):
                raise (UsageError if isinstance(exc, UsageError) else FacekitError)(f"{where}: {detail}") from exc
            raise FacekitError(f"{where} failed: {exc.__class__.__name__}: {detail}") from exc
    if context.format:
        context.written.append(write_report(context.report, context.format, context.out_dir))
    return context.written


def print_written(console: Console, paths: Sequence[Path]) -> None:
    if paths:
        console.print("\n[bold]Wrote[/bold]")
        for path in dict.fromkeys(paths):  # once each, though two reporters may name the same figure
            console.print(f"  {path}", highlight=False, soft_wrap=True)  # paths stay copyable


# Comparison ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Several runs' averages side by side (the study's Table 5, one column per run)."""

    runs: list[str]
    models: list[str]  # "arch · loss · split" per run
    rows: list[tuple[str, list[float | None]]]

    def table(self) -> TableData:
        rows = [("Model", *self.models)]
        rows += [(label, *(number(v) for v in values)) for label, values in self.rows]
        return TableData(
            "Runs compared: averages over classes (macro)",
            ("Metric", *self.runs),
            rows,
            (False, *[True] * len(self.runs)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "models": self.models,
            "metrics": {label: dict(zip(self.runs, values)) for label, values in self.rows},
        }


def compare_runs(runs: Sequence[Run]) -> Comparison:
    """Macro averages of each run's test predictions, plus the kept model's validation loss."""
    if len(runs) < 2:
        raise UsageError("--compare needs at least two runs (RUN and one --compare RUN, or two --compare RUN)")
    reports = [build_report(run, top=0, worst=0, confusions=0) for run in runs]
    names = [report.name for report in reports]
    if len(set(names)) < len(names):  # runs from different folders may share a name
        names = [str(report.run.path) for report in reports]
    rows: list[tuple[str, list[float | None]]] = [
        (METRIC_LABELS[name], [r.metrics.macro(name) for r in reports]) for name in STUDY_METRICS
    ]
    rows += [
        ("Overall accuracy", [r.metrics.overall_accuracy for r in reports]),
        ("Balanced accuracy", [r.metrics.balanced_accuracy for r in reports]),
        ("Macro F1", [r.metrics.macro("f1") for r in reports]),
        ("Validation loss", [(r.kept_fold or {}).get("val_loss") for r in reports]),
    ]
    rows += openset_comparison_rows(reports)
    models = [
        " · ".join(str(r.run.config.get(key)) for key in ("arch", "loss", "split")) for r in reports
    ]
    return Comparison(names, models, rows)


def openset_comparison_rows(reports: Sequence[Report]) -> list[tuple[str, list[float | None]]]:
    """Each run's open-set figures by its default score (None for a closed-set run); none when no run is open-set."""
    from facekit.openset import FAR_POINTS, FPIR_POINTS

    if not any(r.openset for r in reports):
        return []
    chosen = [r.openset["scores"].get(r.openset["score"]) if r.openset else None for r in reports]

    def value(figures: dict[str, Any] | None, *keys: str) -> float | None:
        for key in keys:
            figures = None if figures is None else figures.get(key)
        return None if figures is None or (isinstance(figures, float) and math.isnan(figures)) else figures

    rows: list[tuple[str, list[float | None]]] = [("Open-set rank-1", [value(f, "rank1") for f in chosen])]
    rows += [(f"FNIR at FPIR {x:g}", [value(f, "fnir_at_fpir", f"{x:g}") for f in chosen]) for x in FPIR_POINTS]
    rows += [(f"TAR at FAR {x:g}", [value(f, "tar_at_far", f"{x:g}") for f in chosen]) for x in FAR_POINTS]
    rows += [
        ("FPIR at the run's threshold", [value(f, "at_threshold", "fpir") for f in chosen]),
        ("FNIR at the run's threshold", [value(f, "at_threshold", "fnir") for f in chosen]),
    ]
    return rows


# Rendering ----------------------------------------------------------------------------------


# Headers for terminals too narrow for the full names (80 columns and a class name).
SHORT_HEADERS = {"Support": "n", "Accuracy": "Acc", "Precision": "Prec", "Recall": "Rec", "Aggregated": "Agg"}


def rich_table(table: TableData, width: int | None = None) -> Table:
    """The table as Rich renders it; print ``table.caption`` after it (a Rich caption would wrap
    to the table's width). Below 100 columns of ``width``, metric headers are abbreviated."""
    from rich.text import Text

    from facekit.text import printable, rich_safe

    rich = Table(title=rich_safe(table.title), title_justify="left", show_header=any(table.columns))
    narrow = width is not None and width < 100
    for position, (header, numeric) in enumerate(zip(table.columns, table.numeric)):
        header = rich_safe(SHORT_HEADERS.get(header, header) if narrow else header)
        widest = max((len(str(row[position])) for row in table.rows), default=0)
        if numeric or position == 0:
            # Numbers and ranks keep their width; in a narrow terminal their headers wrap instead.
            rich.add_column(header, justify="right" if numeric else "left", min_width=widest, overflow="fold")
        else:
            # Names are what people read first: never squeezed below 20 characters.
            rich.add_column(header, justify="left", min_width=min(widest, 20), overflow="fold")
    for row in table.rows:
        rich.add_row(*(Text(printable(cell)) for cell in row))  # Text: a name is never read as markup
    return rich


def markdown_table(table: TableData) -> str:
    from facekit.text import markdown_safe

    def cell(text: str) -> str:
        return markdown_safe(text, cell=True)

    lines = [f"### {markdown_safe(table.title)}", ""]
    lines.append("| " + " | ".join(cell(c) if c else " " for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if numeric else "---" for numeric in table.numeric) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", f"*{markdown_safe(table.caption)}*"]
    return "\n".join(lines) + "\n"


def report_markdown(report: Report) -> str:
    from facekit.text import markdown_safe

    parts = [f"## Report: {markdown_safe(report.name)}", "", markdown_safe(report.heading()), ""]
    parts += [markdown_table(table) for table in report.tables()]
    return "\n".join(parts)


def report_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


def report_csv(report: Report) -> str:
    """One row per class (all classes, by id), scores with CSV_DECIMALS decimals; empty cells
    where a metric is not defined."""
    buffer = io.StringIO()
    columns = ["id", "class", "support", "predicted", "train_images", *METRICS]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in report.class_rows():
        writer.writerow({k: csv_number(row[k]) if k in METRICS else row[k] for k in columns})
    return buffer.getvalue()


def csv_number(value: float | None) -> str:
    """CSV_DECIMALS decimals, or an empty cell for a value that is not defined."""
    return "" if value is None else f"{value:.{CSV_DECIMALS}f}"


def comparison_markdown(comparison: Comparison) -> str:
    return markdown_table(comparison.table())


def comparison_json(comparison: Comparison) -> str:
    return json.dumps(comparison.to_dict(), indent=2) + "\n"


def comparison_csv(comparison: Comparison) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", *comparison.runs])
    writer.writerow(["model", *comparison.models])
    for label, values in comparison.rows:
        writer.writerow([label, *(csv_number(v) for v in values)])
    return buffer.getvalue()


REPORT_RENDERERS: dict[str, Callable[[Report], str]] = {
    "markdown": report_markdown, "json": report_json, "csv": report_csv,
}
COMPARISON_RENDERERS: dict[str, Callable[[Comparison], str]] = {
    "markdown": comparison_markdown, "json": comparison_json, "csv": comparison_csv,
}


def check_format(fmt: str | None) -> str | None:
    """Accept ``md`` as ``markdown``; anything else unknown is a usage error."""
    if fmt is None:
        return None
    fmt = {"md": "markdown"}.get(fmt.lower(), fmt.lower())
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not supported: use one of {', '.join(FORMATS)}")
    return fmt


def write_document(text: str, out_dir: Path, stem: str, fmt: str) -> Path:
    path = Path(out_dir) / f"{stem}{FORMAT_SUFFIX[fmt]}"
    atomic_write(path, text.encode())
    return path


def write_report(report: Report, fmt: str, out_dir: Path) -> Path:
    """Write ``report.md``/``.json``/``.csv`` into ``out_dir`` and return its path."""
    fmt = check_format(fmt)
    return write_document(REPORT_RENDERERS[fmt](report), out_dir, "report", fmt)


def write_comparison(comparison: Comparison, fmt: str, out_dir: Path) -> Path:
    """Write ``comparison.md``/``.json``/``.csv`` into ``out_dir`` and return its path."""
    fmt = check_format(fmt)
    return write_document(COMPARISON_RENDERERS[fmt](comparison), out_dir, "comparison", fmt)
