"""``facekit report --html FILE``: a run's report as one self-contained web page, with the faces in it.

The page needs no network and no other file: figures and thumbnails are inlined as ``data:``
URIs, the per-class table sorts and filters with a few lines of inline JavaScript (no library),
and every class name, file name and other text from the run is HTML-escaped, so a class folder
named ``<script>...`` shows as text and runs nothing.

Sizes stay bounded for runs of many classes: at most :data:`MAX_TABLE_ROWS` rows in the
per-class table (the worst classes first; ``report.csv`` holds every class), at most
:data:`THUMBNAILS_PER_CLASS` thumbnails per worst class and :data:`THUMBNAILS_PER_SIDE` per side
of a confused pair, and :data:`MAX_THUMBNAILS` in all. The page says so where it leaves
something out.
"""

from __future__ import annotations

import base64
import io
import tempfile
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekit.errors import FacekitError, UsageError
from facekit.files import atomic_write
from facekit.metrics import METRIC_LABELS, METRICS
from facekit.report import Report, ReportContext, TableData, number, openset_table
from facekit.runs import os_error_line

THUMBNAIL_SIZE = 96  # pixels, the longer side; JPEG of ~3 KB each
THUMBNAIL_QUALITY = 80
THUMBNAILS_PER_CLASS = 12  # test images shown for each worst class
THUMBNAILS_PER_SIDE = 6  # images shown on each side of a confused pair
MAX_THUMBNAILS = 400  # in the whole page (~1.5 MB): the page stays quick to open and to mail
MAX_TABLE_ROWS = 5000  # per-class table rows (~0.8 MB); more classes: the worst ones, and a note
FIGURES = {  # the report's figures, in reading order, with what they show
    "loss_curves.png": "Training (dashed) and validation (solid) loss and accuracy per epoch; the kept model bold.",
    "confusion_matrix.png": "Confusions among the most confused classes (colour: share of the true class).",
    "score_vs_training_images.png": "Each class's aggregated score against its training images.",
    "top_confusions.png": "The most frequent mistakes (true -> predicted).",
    "score_distribution.png": "Aggregated scores of all classes, and by training images.",
    "det_curve.png": "Open-set identification: missed known people against accepted strangers (DET), thresholds marked.",
}


def write_html_report(context: ReportContext, path: str | Path) -> Path:
    """Write ``context.report`` as one self-contained HTML page at ``path``; returns ``path``.

    The figures are the PNGs the ``plots`` reporter wrote into ``context.written`` when it ran,
    otherwise they are drawn now (into a temporary folder, not into the run).
    """
    path = check_html_target(path)
    figures = [p for p in context.written if p.name in FIGURES and p.is_file()]
    with tempfile.TemporaryDirectory(prefix="facekit-figures-") as scratch:
        if not figures:
            from facekit.plots import report_figures  # matplotlib is slow to import

            figures = report_figures(context.report, Path(scratch))
        page = html_page(context.report, figures)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, page.encode("utf-8"))
    except OSError as exc:
        raise FacekitError(f"could not write the HTML report: {os_error_line(exc, path)}") from None
    return path


def check_html_target(path: str | Path) -> Path:
    """``path`` if a page can be written there; a folder or a file under a file is a usage error."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--html {path} is a folder: give a file name, e.g. {path / 'report.html'}")
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise UsageError(f"--html {path}: {blocking} is a file, not a folder; choose another place for the page")
    return path


@dataclass(frozen=True)
class TestImage:
    """One test image: its file (relative to the data root), true and predicted class, confidence."""

    __test__ = False  # not a pytest test class, despite its name

    file: str
    true: int
    predicted: int
    confidence: float | None


class Thumbnails:
    """Test images as small inlined JPEGs, each made once, at most ``limit`` of them."""

    def __init__(self, root: Path, limit: int = MAX_THUMBNAILS):
        self.root = root
        self.limit = limit
        self.made: dict[str, str | None] = {}
        self.missing = 0
        self.left_out = 0

    def data_uri(self, file: str) -> str | None:
        if file not in self.made:
            self.made[file] = _thumbnail(self.root / file)
            self.missing += self.made[file] is None
        return self.made[file]

    def select(self, images: Sequence[TestImage], at_most: int) -> list[TestImage]:
        """The first ``at_most`` of ``images`` that fit under the page's limit (those already
        made always do); the rest beyond the limit are counted as left out."""
        chosen: list[TestImage] = []
        new = 0
        for image in images[:at_most]:
            if image.file in self.made or len(self.made) + new < self.limit:
                new += image.file not in self.made
                chosen.append(image)
            else:
                self.left_out += 1
        return chosen


def _thumbnail(file: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image.draft("RGB", (THUMBNAIL_SIZE * 2, THUMBNAIL_SIZE * 2))  # JPEG: decode at a smaller scale
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    except (OSError, UnidentifiedImageError, ValueError):
        return None  # moved, deleted or damaged since training: the page shows the file name instead
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def test_images(report: Report) -> list[TestImage]:
    """Every test image of the run with its prediction and the model's confidence in it."""
    run = report.run
    predictions = run.predictions()
    files = run.split["files"]
    if "top_probs" in predictions:
        confidence = predictions["top_probs"][:, 0] if len(predictions["index"]) else np.zeros(0)
    else:  # runs from before top-k predictions keep the whole softmax
        rows = np.arange(len(predictions["index"]))
        confidence = predictions["probs"][rows, predictions["y_pred"]]
    return [
        TestImage(str(files[int(i)]), int(t), int(p), float(c))
        for i, t, p, c in zip(predictions["index"], predictions["y_true"], predictions["y_pred"], confidence)
    ]


# Page ---------------------------------------------------------------------------------------------


def html_page(report: Report, figures: Sequence[Path]) -> str:
    """The whole page as a string (see the module docstring)."""
    run = report.run
    images = test_images(report)
    thumbnails = Thumbnails(Path(run.split["root"]))
    # Built before the summary: the summary says how many images could not be shown.
    worst = _worst_classes(report, images, thumbnails)
    pairs = _confused_pairs(report, images, thumbnails)
    table = _class_table(report)
    body = [
        f"<h1>facekit report: {_e(report.name)}</h1>",
        f"<p class=lead>{_e(report.heading())}</p>",
        _nav(),
        _summary(report, thumbnails),
        worst,
        pairs,
        _figures(figures),
        table,
        "<footer>Made by <code>facekit report --html</code>. Self-contained: no network, images inlined.</footer>",
    ]
    return PAGE.format(title=_e(f"facekit report: {report.name}"), style=STYLE, body="\n".join(body), script=SCRIPT)


def _e(text: Any) -> str:
    return escape(str(text), quote=True)


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def _nav() -> str:
    links = [("summary", "Summary"), ("worst", "Worst classes"), ("confusions", "Most confused pairs"),
             ("plots", "Plots"), ("classes", "Every class")]  # fmt: skip
    return "<nav>" + " · ".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in links) + "</nav>"


def _table(table: TableData, css: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns) if any(table.columns) else ""
    rows = "".join(
        "<tr>" + "".join(f'<td{" class=num" if numeric else ""}>{_e(cell)}</td>' for cell, numeric in zip(row, table.numeric))
        + "</tr>"
        for row in table.rows
    )
    caption = f"<p class=caption>{_e(table.caption)}</p>" if table.caption else ""
    return (f"<h3>{_e(table.title)}</h3><table class=\"small {css}\">"
            + (f"<thead><tr>{head}</tr></thead>" if head else "") + f"<tbody>{rows}</tbody></table>{caption}")


def _summary(report: Report, thumbnails: Thumbnails) -> str:
    config = report.run.config
    keys = ("arch", "loss", "split", *(("folds",) if config.get("split") == "kfold" else ()), "epochs", "batch_size", "lr",
            "weight_decay", "schedule", "input_size", "augment", "seed", "data", "created", "facekit_version")
    settings = [(key, config[key]) for key in keys if config.get(key) is not None]
    settings_line = " · ".join(f"<b>{_e(key)}</b> {_e(value)}" for key, value in settings)
    notes = []
    if thumbnails.missing:
        notes.append(f"{thumbnails.missing} test image(s) could not be read from {thumbnails.root} (moved or deleted "
                     "since training?): their file names are shown instead.")
    if thumbnails.left_out:
        notes.append(f"{thumbnails.left_out} thumbnail(s) left out: a page shows at most {MAX_THUMBNAILS} images, "
                     "so that it stays quick to open. Ask for fewer classes with --worst or --confusions.")
    tables = [report.summary_table(), report.averages_table()]
    folds = report.folds_table()
    parts = ['<section id="summary"><h2>Summary</h2>', f"<p class=settings>{settings_line}</p>"]
    parts += [f"<p class=note>{_e(note)}</p>" for note in notes]
    tables += [folds] if folds else []
    tables += [openset_table(report.openset)] if report.openset else []
    parts.append('<div class="row">' + "".join(f"<div>{_table(t)}</div>" for t in tables) + "</div>")
    return "\n".join(parts) + "</section>"


def _figures(figures: Sequence[Path]) -> str:
    order = list(FIGURES)
    shown = sorted(figures, key=lambda p: order.index(p.name) if p.name in order else len(order))
    items = [
        f'<figure class=plot><img src="{_png_uri(p)}" alt="{_e(p.name)}"><figcaption>{_e(FIGURES.get(p.name, p.name))}'
        "</figcaption></figure>"
        for p in shown
    ]
    if not items:
        items = ["<p>No figures.</p>"]
    return '<section id="plots"><h2>Plots</h2>' + "\n".join(items) + "</section>"


def _thumbnail_html(image: TestImage, uri: str | None, classes: Sequence[str], *, show_prediction: bool = True) -> str:
    right = image.true == image.predicted
    predicted = classes[image.predicted]
    title = f"{image.file}: {classes[image.true]}, predicted {predicted}" + (
        f" ({image.confidence:.0%})" if image.confidence is not None else "")
    picture = (f'<img src="{uri}" alt="{_e(image.file)}">' if uri
               else f'<span class=missing>not found<br>{_e(image.file)}</span>')  # fmt: skip
    caption = ""
    if show_prediction:
        mark = "✓" if right else "✗"
        confidence = f" {image.confidence:.0%}" if image.confidence is not None else ""
        caption = f"<figcaption>{mark} {_e(predicted)}{confidence}</figcaption>"
    return f'<figure class="thumb {"right" if right else "wrong"}" title="{_e(title)}">{picture}{caption}</figure>'


def _thumbnail_strip(images: Sequence[TestImage], thumbnails: Thumbnails, classes: Sequence[str], per_strip: int,
                     *, show_prediction: bool = True) -> str:  # fmt: skip
    shown = thumbnails.select(images, per_strip)
    html = "".join(_thumbnail_html(i, thumbnails.data_uri(i.file), classes, show_prediction=show_prediction) for i in shown)
    if len(shown) < len(images):
        html += f"<span class=more>{len(shown)} of {len(images)} shown</span>"
    return f"<div class=thumbs>{html or '<span class=more>no test images</span>'}</div>"


def _worst_classes(report: Report, images: Sequence[TestImage], thumbnails: Thumbnails) -> str:
    classes = report.classes
    parts = ['<section id="worst"><h2>Worst classes</h2>',
             "<p>Each class's test images, labelled with what the model predicted (✓ right, ✗ wrong) "
             "and its confidence. Wrong ones first.</p>"]  # fmt: skip
    if not report.worst:
        parts.append("<p>None asked for (<code>--worst 0</code>).</p>")
    wanted = set(report.worst)
    by_class: dict[int, list[TestImage]] = {class_id: [] for class_id in wanted}
    for image in images:
        if image.true in wanted:
            by_class[image.true].append(image)
    for row in report.class_rows(report.worst):
        own = sorted(by_class[row["id"]], key=lambda i: (i.true == i.predicted, i.file))
        figures = ", ".join(f"{METRIC_LABELS[m].lower()} {number(row[m])}" for m in ("aggregated", "precision", "recall"))
        parts.append(
            f'<div class=worst><h3>{_e(row["class"])} <span class=id>(id {row["id"]})</span></h3>'
            f'<p class=figures>{_count(row["support"], "test image")}, {_count(row["train_images"], "training image")}, '
            f'{figures}</p>'
            + _thumbnail_strip(own, thumbnails, classes, THUMBNAILS_PER_CLASS) + "</div>"
        )
    return "\n".join(parts) + "</section>"


def _confused_pairs(report: Report, images: Sequence[TestImage], thumbnails: Thumbnails) -> str:
    classes = report.classes
    labels = np.asarray(report.run.split["labels"])
    files = report.run.split["files"]
    parts = ['<section id="confusions"><h2>Most confused pairs</h2>',
             "<p>Left: test images of the true class that the model took for the other class. "
             "Right: images of the class it predicted (from the whole data set), to compare.</p>"]  # fmt: skip
    if not report.confusions:
        parts.append("<p>No confusions to show.</p>")
    by_pair: dict[tuple[int, int], list[TestImage]] = {(c.true, c.predicted): [] for c in report.confusions}
    for image in images:
        if (image.true, image.predicted) in by_pair:
            by_pair[image.true, image.predicted].append(image)
    for confusion in report.confusions:
        mistaken = by_pair[confusion.true, confusion.predicted]
        examples = [TestImage(str(files[i]), confusion.predicted, confusion.predicted, None)
                    for i in np.flatnonzero(labels == confusion.predicted)[:THUMBNAILS_PER_SIDE]]  # fmt: skip
        parts.append(
            "<div class=pair>"
            f'<div><h3>{_e(classes[confusion.true])} <span class=id>(id {confusion.true})</span></h3>'
            f"<p class=figures>{confusion.count} taken for the other ({confusion.share:.0%} of its test images)</p>"
            + _thumbnail_strip(mistaken, thumbnails, classes, THUMBNAILS_PER_SIDE) + "</div>"
            f'<div class=arrow>→</div><div><h3>{_e(classes[confusion.predicted])} '
            f'<span class=id>(id {confusion.predicted})</span></h3><p class=figures>what it was taken for</p>'
            + _thumbnail_strip(examples, thumbnails, classes, THUMBNAILS_PER_SIDE, show_prediction=False)
            + "</div></div>"
        )
    return "\n".join(parts) + "</section>"


TABLE_COLUMNS = ("id", "class", "support", "predicted", "train_images", *METRICS)
TABLE_HEADERS = {"id": "Id", "class": "Class", "support": "Support", "predicted": "Predicted",
                 "train_images": "Training images", **METRIC_LABELS}  # fmt: skip


def _class_table(report: Report) -> str:
    total = report.metrics.num_classes
    if total > MAX_TABLE_ROWS:
        ids = report.metrics.worst_k(MAX_TABLE_ROWS)
        note = (f"<p class=note>{MAX_TABLE_ROWS:,} of {total:,} classes: the worst by aggregated score "
                "(every class is in <code>facekit report --format csv</code>).</p>")
    else:
        ids, note = None, ""
    head = "".join(
        f'<th data-key="{key}" class="{"num" if key != "class" else ""}" tabindex=0 title="sort">{_e(TABLE_HEADERS[key])}</th>'
        for key in TABLE_COLUMNS
    )
    body = "\n".join(_class_row(row) for row in report.class_rows(ids))
    return (
        '<section id="classes"><h2>Every class</h2>' + note
        + '<p><label>Filter by name <input id="filter" type="search" placeholder="part of a class name"></label> '
        f'<span id="shown">{len(ids) if ids is not None else total}</span> classes shown. '
        "Click a column heading to sort (again: the other way).</p>"
        f'<table id="class-table" class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></section>'
    )


def _class_row(row: dict[str, Any]) -> str:
    cells = []
    for key in TABLE_COLUMNS:
        value = row[key]
        if key == "class":
            cells.append(f"<td>{_e(value)}</td>")
        elif key in METRICS:
            cells.append(f'<td class=num data-v="{"" if value is None else f"{value:.6g}"}">{number(value)}</td>')
        else:
            cells.append(f"<td class=num>{int(value)}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
<script>{script}</script>
</body>
</html>
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin: .8em 0 .2em; } .lead { color: #555; margin-top: 0; } nav { margin: .5em 0 1em; }
.id, .figures, .caption, .more, footer { color: #666; font-size: .9em; } .figures { margin: 0 0 .3em; }
.note { background: #fff6d6; border: 1px solid #e6cf7a; padding: .4em .6em; }
.row { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; } .row > div { max-width: 560px; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; background: #f4f4f4; position: sticky; top: 0; }
table.sortable th[aria-sort=ascending]::after { content: " ▲"; } table.sortable th[aria-sort=descending]::after { content: " ▼"; }
table.sortable tbody tr:hover { background: #f0f6ff; }
figure.plot { margin: 1em 0; display: inline-block; vertical-align: top; max-width: 100%; } figure.plot img { max-width: 100%; } figure.plot figcaption { color: #555; }
.thumbs { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
figure.thumb { margin: 0; width: 104px; text-align: center; font-size: 11px; overflow-wrap: anywhere; }
figure.thumb img, .missing { width: 96px; height: 96px; object-fit: contain; border: 3px solid #bbb; background: #eee; display: block; }
figure.thumb.right img { border-color: #2a9d3a; } figure.thumb.wrong img { border-color: #d33; }
.missing { font-size: 10px; color: #666; overflow: hidden; box-sizing: border-box; padding: 4px; }
.pair { display: flex; gap: 1em; align-items: flex-start; border-top: 1px solid #eee; padding: .4em 0; }
.pair > div:not(.arrow) { flex: 1; } .arrow { font-size: 2em; color: #999; padding-top: 1.2em; }
.worst { border-top: 1px solid #eee; padding: .2em 0 .6em; }
footer { margin: 3em 0 1em; }
"""

# Sorting and filtering the per-class table. The state lives in the address's fragment
# (#sort=KEY:asc&filter=TEXT), so a sorted, filtered view can be bookmarked or shared.
SCRIPT = """
(function () {
  var table = document.getElementById('class-table');
  if (!table) return;
  var body = table.tBodies[0], heads = table.tHead.rows[0].cells, filterBox = document.getElementById('filter');
  var rows = Array.prototype.slice.call(body.rows), state = {sort: null, dir: 'asc', filter: ''};
  var classColumn = -1;
  for (var c = 0; c < heads.length; c++) if (heads[c].dataset.key === 'class') classColumn = c;
  function cellValue(row, column) {
    var cell = row.cells[column];
    if (cell.dataset.v !== undefined) return cell.dataset.v === '' ? null : parseFloat(cell.dataset.v);
    var text = cell.textContent;
    return column === classColumn ? text.toLowerCase() : parseFloat(text);
  }
  function apply() {
    var column = -1;
    for (var c = 0; c < heads.length; c++) {
      var on = heads[c].dataset.key === state.sort;
      if (on) column = c;
      if (on) heads[c].setAttribute('aria-sort', state.dir === 'asc' ? 'ascending' : 'descending');
      else heads[c].removeAttribute('aria-sort');
    }
    var sorted = rows.slice();
    if (column >= 0) {
      var sign = state.dir === 'asc' ? 1 : -1;
      sorted = sorted.map(function (row, i) { return [cellValue(row, column), i, row]; });
      sorted.sort(function (a, b) {
        if (a[0] === null || b[0] === null) return (a[0] === null) - (b[0] === null) || a[1] - b[1];
        return (a[0] < b[0] ? -sign : a[0] > b[0] ? sign : 0) || a[1] - b[1];
      });
      sorted = sorted.map(function (entry) { return entry[2]; });
    }
    var needle = state.filter.toLowerCase(), shown = 0, fragment = document.createDocumentFragment();
    sorted.forEach(function (row) {
      var match = !needle || row.cells[classColumn].textContent.toLowerCase().indexOf(needle) >= 0;
      row.hidden = !match; shown += match; fragment.appendChild(row);
    });
    body.appendChild(fragment);
    document.getElementById('shown').textContent = shown;
    var parts = [];
    if (state.sort) parts.push('sort=' + encodeURIComponent(state.sort + ':' + state.dir));
    if (state.filter) parts.push('filter=' + encodeURIComponent(state.filter));
    history.replaceState(null, '', parts.length ? '#' + parts.join('&') : location.pathname + location.search);
  }
  function sortBy(key) {
    state.dir = state.sort === key && state.dir === 'asc' ? 'desc' : 'asc';
    state.sort = key; apply();
  }
  for (var h = 0; h < heads.length; h++) {
    heads[h].addEventListener('click', function () { sortBy(this.dataset.key); });
    heads[h].addEventListener('keydown', function (e) { if (e.key === 'Enter') sortBy(this.dataset.key); });
  }
  filterBox.addEventListener('input', function () { state.filter = filterBox.value; apply(); });
  location.hash.replace(/^#/, '').split('&').forEach(function (part) {
    var pair = part.split('='), value = decodeURIComponent(pair[1] || '');
    if (pair[0] === 'sort') { state.sort = value.split(':')[0]; state.dir = value.split(':')[1] === 'desc' ? 'desc' : 'asc'; }
    if (pair[0] === 'filter') { state.filter = value; filterBox.value = value; }
  });
  if (state.sort || state.filter) apply();
})();
"""
