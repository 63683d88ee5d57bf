"""`facekit report --html`: the page's structure (html.parser), escaping, size limits, the command,
and (where Chromium is installed) the page rendered by a real headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from facekit import report_html
from facekit.cli import app
from facekit.errors import UsageError
from facekit.report import ReportContext, build_report
from facekit.runs import Run, write_json

HOSTILE = "<script>alert(1)</script>"
# Folder names can hold anything but "/": this one would run code if a page put it in unescaped.
HOSTILE_FOLDER = "<img src=x onerror=alert(2)>"
CLASSES = [HOSTILE, HOSTILE_FOLDER, 'Tom & "Jerry"', "Dee_D", "Eve_E", "Fay_F"]
MAGENTA = (255, 0, 255)  # the test images' colour: nothing else on the page has it


def make_image_run(path: Path, classes=CLASSES, *, per_class_test: int = 3, train_per_class: int = 4,
                   image_size: int = 24, wrong_every: int = 2) -> Path:  # fmt: skip
    """A finished run folder, as `facekit train` leaves it, whose images exist on disk (magenta squares)."""
    root = path.parent / f"{path.name}-faces"
    files, labels = [], []
    for c, name in enumerate(classes):
        folder = name.replace("/", "_")
        for i in range(train_per_class + per_class_test):
            files.append(f"{folder}/{i}.png")
            labels.append(c)
    pixel = Image.new("RGB", (image_size, image_size), MAGENTA)
    for file in files:
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        pixel.save(root / file)
    per = train_per_class + per_class_test
    test = [c * per + train_per_class + i for c in range(len(classes)) for i in range(per_class_test)]
    train = [i for i in range(len(files)) if i not in set(test)]
    y_true = np.array([labels[i] for i in test])
    # Every wrong_every-th test image goes to the next class; class 0 is always wrong (the worst).
    y_pred = np.array([(t + 1) % len(classes) if (k % wrong_every == 0 or t == 0) else t for k, t in enumerate(y_true)])
    path.mkdir(parents=True)
    write_json(path / "config.json", {"arch": "baseline", "loss": "plain", "split": "holdout", "data": str(root),
                                      "input_size": 40, "epochs": 2, "lr": 1e-4, "seed": 0})  # fmt: skip
    write_json(path / "classes.json", list(classes))
    write_json(path / "split.json", {"strategy": "holdout", "root": str(root.resolve()), "files": files,
                                     "labels": labels, "test": test, "folds": [{"train": train, "val": []}], "notes": []})  # fmt: skip
    write_json(path / "history.json", [
        {"fold": 0, "epoch": e, "train_loss": 2.0 / e, "val_loss": 1.5 + 1 / e, "train_acc": 0.2 * e, "val_acc": 0.1 * e}
        for e in (1, 2)
    ])
    write_json(path / "folds.json", {"kept": 0, "folds": [{"fold": 0, "best_epoch": 2, "val_loss": 2.0, "val_acc": 0.2}],
                                     "val_loss_mean": 2.0, "val_loss_std": 0.0, "val_acc_mean": 0.2, "val_acc_std": 0.0})  # fmt: skip
    k = min(len(classes), 10)
    top_ids = np.stack([np.roll(np.arange(len(classes)), -p)[:k] for p in y_pred])
    top_probs = np.tile(np.linspace(0.6, 0.01, k, dtype=np.float32), (len(test), 1))
    np.savez(path / "predictions.npz", index=np.array(test), y_true=y_true, y_pred=y_pred, top_ids=top_ids,
             top_probs=top_probs)  # fmt: skip
    return path


class Page(HTMLParser):
    """What a test needs of a page: its tags, the class table's rows, images, scripts, all text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self.hidden: list[bool] = []  # per row of the class table
        self._in_table = self._in_row = self._in_cell = False
        self._path: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table" and attributes.get("id") == "class-table":
            self._in_table = True
        elif self._in_table and tag == "tr" and "tbody" in self._path:
            self.rows.append([])
            self.hidden.append("hidden" in attributes)
        elif self._in_table and tag == "td" and self.rows:
            self.rows[-1].append("")
            self._in_cell = True
        if tag not in ("img", "meta", "input", "br"):
            self._path.append(tag)

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        if tag == "td":
            self._in_cell = False
        if self._path and self._path[-1] == tag:
            self._path.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._in_cell and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data

    def images(self, kind: str) -> list[dict]:
        return [a for t, a in self.tags if t == "img" and (a.get("src") or "").startswith(f"data:image/{kind};base64,")]


def html_of(run_dir: Path, out: Path, *, draw: bool = False, **report_options) -> str:
    """The page of ``run_dir``; its figures drawn when ``draw``, else one tiny stand-in (quicker)."""
    run = Run.open(run_dir)
    written = []
    if not draw:
        written.append(out.parent / "loss_curves.png")
        Image.new("RGB", (4, 4), (1, 2, 3)).save(written[0])
    context = ReportContext(run=run, report=build_report(run, **report_options), console=Console(file=open(os.devnull, "w")),
                            out_dir=run_dir / "report", written=written)  # fmt: skip
    return report_html.write_html_report(context, out).read_text()


def test_the_page_has_the_table_the_thumbnails_and_the_figures_and_escapes_every_name(tmp_path):
    run_dir = make_image_run(tmp_path / "run")
    text = html_of(run_dir, tmp_path / "page.html", draw=True, worst=3, confusions=4)
    page = Page(text)

    # Every class is one row of the table, by id, with its name as text.
    assert [row[0] for row in page.rows] == [str(i) for i in range(len(CLASSES))]
    assert [row[1] for row in page.rows] == CLASSES
    # The names show as text and never became markup: one script (ours), no event handlers.
    assert HOSTILE in "".join(page.text) and HOSTILE_FOLDER in "".join(page.text)
    assert [t for t, _ in page.tags].count("script") == 1
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    assert "<script>alert" not in text and "<img src=x" not in text
    # Thumbnails: the worst classes' test images and the confused pairs' images, inlined, each made once.
    thumbnails = page.images("jpeg")
    assert len(thumbnails) >= 3 * 3
    folder = HOSTILE.replace("/", "_")
    assert {a["alt"] for a in thumbnails} >= {f"{folder}/{i}.png" for i in range(4, 7)}  # class 0, always wrong
    # The figures are inlined PNGs; nothing is fetched from anywhere.
    assert len(page.images("png")) == 3
    sources = [a.get("src") or a.get("href") or "" for _, a in page.tags]
    assert not [s for s in sources if re.match(r"(https?:)?//", s)]
    # The worst class (always wrong) is shown with what each image was taken for.
    assert f"✗ {HOSTILE_FOLDER} 60%" in "".join(page.text)


def test_the_page_reuses_the_plots_reporters_figures(tmp_path):
    page = Page(html_of(make_image_run(tmp_path / "run"), tmp_path / "page.html", draw=False))
    assert len(page.images("png")) == 1  # the one given, not freshly drawn ones


def test_images_moved_since_training_show_their_names_and_a_note(tmp_path):
    run_dir = make_image_run(tmp_path / "run")
    shutil.rmtree(tmp_path / "run-faces" / CLASSES[2].replace("/", "_"))
    text = "".join(Page(html_of(run_dir, tmp_path / "page.html", worst=6)).text)
    assert "could not be read" in text and "not found" in text


def test_many_classes_keep_the_page_small_and_say_what_was_left_out(tmp_path, monkeypatch):
    classes = [f"id_{i:04d}" for i in range(1200)]
    run_dir = make_image_run(tmp_path / "run", classes, per_class_test=2, train_per_class=1, image_size=8)
    monkeypatch.setattr(report_html, "MAX_TABLE_ROWS", 1000)
    text = html_of(run_dir, tmp_path / "page.html", worst=300, confusions=10)
    page = Page(text)
    words = " ".join(page.text)
    assert len(page.rows) == 1000 and "1,000 of 1,200 classes" in words
    assert len({a["alt"] for a in page.images("jpeg")}) == report_html.MAX_THUMBNAILS
    assert "thumbnail(s) left out" in words
    assert len(text) < 3_000_000, len(text)  # 400 thumbnails and 1,000 rows: a few MB at most


def test_a_folder_or_a_path_under_a_file_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UsageError, match="is a folder"):
        report_html.check_html_target(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        report_html.check_html_target(tmp_path / "file" / "page.html")


def test_the_command_writes_the_page_and_lists_it(tmp_path):
    run_dir = make_image_run(tmp_path / "run")
    refused = CliRunner().invoke(app, ["report", str(run_dir), "--html", str(tmp_path)])
    assert refused.exit_code == 2 and "is a folder" in refused.output
    assert not (run_dir / "report").exists()  # refused before any reporter wrote a file
    result = CliRunner().invoke(app, ["report", str(run_dir), "--html", str(tmp_path / "out" / "page.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "page.html").is_file() and "page.html" in result.output
    both = CliRunner().invoke(app, ["report", str(run_dir), str(run_dir), "--html", "x.html"])
    assert both.exit_code == 2 and "--html reports one run" in both.output


# In a real browser ---------------------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")


def browser() -> str:
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if not found:
        pytest.skip("no headless browser installed (Debian: apt-get install chromium)")
    return found


def headless(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Uncaught" not in result.stderr, result.stderr[-2000:]  # no error in the page's script
    return result


def test_a_browser_renders_the_page_sorts_and_filters_the_table_and_shows_the_thumbnails(tmp_path):
    browser()
    run_dir = make_image_run(tmp_path / "run", wrong_every=3)
    page_file = tmp_path / "page.html"
    html_of(run_dir, page_file)
    url = page_file.resolve().as_uri()

    # Sorted by the page's own script (the state a click on "Recall" twice leaves in the address).
    dom = Page(headless(tmp_path, "--dump-dom", f"{url}#sort=recall:desc").stdout)
    recall = [float(row[TABLE_COLUMN["recall"]]) for row in dom.rows]
    assert recall == sorted(recall, reverse=True) and len(set(recall)) > 1
    assert ("th", "descending") in [(t, a.get("aria-sort")) for t, a in dom.tags if a.get("aria-sort")]
    names = [row[1] for row in Page(headless(tmp_path, "--dump-dom", f"{url}#sort=class:asc").stdout).rows]
    assert names == sorted(CLASSES, key=str.lower)

    # Filtered: the rows that do not match are hidden, the count says how many are shown.
    filtered = Page(headless(tmp_path, "--dump-dom", f"{url}#filter=tom").stdout)
    shown = [row[1] for row, hidden in zip(filtered.rows, filtered.hidden) if not hidden]
    assert shown == ['Tom & "Jerry"']
    assert "1 classes shown" in " ".join("".join(filtered.text).split())

    # The screenshot shows the thumbnails: the magenta test images, at least a few of them whole.
    shot = tmp_path / "page.png"
    headless(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", url)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    magenta = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] > 200)
    assert magenta.sum() > 4 * 90 * 90, f"{magenta.sum()} magenta pixels: the thumbnails are not on screen"


TABLE_COLUMN = {key: position for position, key in enumerate(report_html.TABLE_COLUMNS)}


@pytest.mark.slow
def test_the_demo_writes_the_web_page_and_says_where_to_open_it(synthetic_dataset, tmp_path):
    result = CliRunner().invoke(app, ["demo", "--data", str(synthetic_dataset), "--out", str(tmp_path / "demo"), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    page = tmp_path / "demo" / "report" / "report.html"
    assert page.is_file() and Page(page.read_text()).images("jpeg")
    assert f"Open the report in a browser: {page.resolve().as_uri()}" in " ".join(result.output.split())
