"""Reports from hand-made run folders: tables, formats, comparison, plots, the CLI command."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from facekit.builtins import reporters as builtin_reporters
from facekit.cli import report_cmd
from facekit.errors import FacekitError, UsageError
from facekit.report import (
    ReportContext,
    build_report,
    compare_runs,
    report_csv,
    report_json,
    report_markdown,
    write_comparison,
    write_report,
)
from facekit.runs import Run, write_json

CLASSES = ["Ann_A", "Bob_B", "Cid_C", "Dee_D", "Eve_E", "Fay_F"]


def make_run(
    path: Path, y_true: list[int], y_pred: list[int], *, folds: int = 1, arch: str = "baseline",
    val_loss: float = 1.5,
) -> Path:
    """A run folder as `facekit train` leaves it, with chosen test predictions."""
    num_classes = len(CLASSES)
    rng = np.random.default_rng(len(y_true) + folds)
    train_per_class = [12, 9, 6, 4, 3, 2]
    labels = [c for c, n in enumerate(train_per_class) for _ in range(n)] + list(y_true)
    train_end = sum(train_per_class)
    test = list(range(train_end, len(labels)))
    train = np.arange(train_end)
    fold_ids = [train[k::folds] for k in range(folds)] if folds > 1 else [np.array([], int)]
    split_folds = [
        {"train": [int(i) for i in train if i not in set(val)] if folds > 1 else train.tolist(), "val": val.tolist()}
        for val in fold_ids
    ]
    write_json(path / "config.json", {
        "arch": arch, "loss": "plain", "split": "kfold" if folds > 1 else "holdout", "data": "faces",
        "input_size": 32, "finetune": False, "epochs": 3, "batch_size": 4, "lr": 1e-4,
        "weight_decay": 5e-3, "seed": 0, "rotate": 15.0, "folds": folds, "device": "cpu",
        "facekit_version": "0.1.0",
    })
    write_json(path / "classes.json", CLASSES)
    write_json(path / "split.json", {
        "strategy": "kfold" if folds > 1 else "holdout", "root": "faces",
        "files": [f"{CLASSES[c]}/{i}.jpg" for i, c in enumerate(labels)], "labels": labels,
        "test": test, "folds": split_folds, "notes": [],
    })
    history = [
        {"fold": k, "epoch": e, "train_loss": 2.0 / e + k * 0.1, "val_loss": val_loss + 1.0 / e + k * 0.05,
         "train_acc": 0.2 * e, "val_acc": 0.15 * e, "images_per_s": 100.0, "seconds": 1.0}
        for k in range(folds) for e in (1, 2, 3)
    ]
    write_json(path / "history.json", history)
    kept = folds - 1
    fold_rows = [{"fold": k, "best_epoch": 3, "val_loss": val_loss + 1 / 3 + k * 0.05, "val_acc": 0.45} for k in range(folds)]
    losses = [row["val_loss"] for row in fold_rows]
    write_json(path / "folds.json", {
        "kept": kept, "folds": fold_rows, "val_loss_mean": float(np.mean(losses)),
        "val_loss_std": float(np.std(losses)), "val_acc_mean": 0.45, "val_acc_std": 0.0,
    })
    probs = rng.random((len(y_true), num_classes)).astype(np.float32)
    np.savez(path / "predictions.npz", index=np.array(test), y_true=np.array(y_true),
             y_pred=np.array(y_pred), probs=probs / probs.sum(1, keepdims=True))
    return path


# Class 0 perfect; 1, 2 and 4 half right (a tie); 3 never predicted; 5 absent from the test split.
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
Y_PRED = [0, 0, 0, 1, 2, 2, 1, 0, 4, 4, 5]


@pytest.fixture
def run(tmp_path) -> Run:
    return Run.open(make_run(tmp_path / "run-a", Y_TRUE, Y_PRED, folds=3))


@pytest.fixture(autouse=True)
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_build_report_rankings_and_confusions(run):
    report = build_report(run, top=3, worst=3, confusions=4)
    # 1, 2 and 4 tie at 0.5: in both rankings the lower ids come first.
    assert report.top == [0, 1, 2]
    assert report.worst == [3, 1, 2]
    assert [(c.true, c.predicted, c.count) for c in report.confusions] == [(1, 2, 1), (2, 1, 1), (3, 0, 1), (3, 4, 1)]
    assert report.train_counts.tolist() == np.bincount(
        np.asarray(run.split["labels"])[run.split["folds"][2]["train"]], minlength=6
    ).tolist()
    row = report.class_row(5)
    assert row["support"] == 0 and row["predicted"] == 1 and row["aggregated"] is None


def test_tables_show_dash_for_unmeasured_and_no_nan(run):
    report = build_report(run, top=6, worst=6)
    text = report_markdown(report)
    assert "nan" not in text.lower()
    assert "Fay_F" in text  # listed as having no test images
    summary = report.summary_table()
    assert ("Never predicted", "Dee_D") in summary.rows
    assert ("No test images (shown as -)", "Fay_F") in summary.rows


def test_markdown_has_study_layout_and_folds(run):
    text = report_markdown(build_report(run))
    assert "### Top 5 classes by aggregated score" in text
    assert "| # | Class | Id | Support | Accuracy | Precision | Recall | BCR | Aggregated |" in text
    assert "| 1 | Ann_A | 0 | 3 | 1.000 | 0.750 | 1.000 | 0.875 | 0.906 |" in text
    assert "### Averages over classes" in text
    assert "### Cross-validation folds" in text
    assert "2 (kept)" in text
    assert "mean ± std" in text


def test_zero_k_hides_its_table(run):
    titles = [table.title for table in build_report(run, top=0, worst=2, confusions=0).tables()]
    assert titles[0] == "Worst 2 classes by aggregated score"
    assert not any(title.startswith(("Top", "Most common confusions")) for title in titles)


def test_json_and_csv_are_machine_readable(run):
    report = build_report(run)
    data = json.loads(report_json(report))
    assert data["averages"]["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0.5 + 0 + 0.5) / 5)
    assert data["per_class"][5]["recall"] is None
    assert [row["id"] for row in data["top"]] == report.top
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert [row["class"] for row in rows] == CLASSES
    assert rows[0]["aggregated"] == "0.9062"  # 0.90625 with 4 decimals
    assert rows[1]["precision"] == "0.5000" and rows[3]["precision"] == "0.0000"
    assert rows[5]["aggregated"] == ""
    assert rows[0]["support"] == "3" and rows[0]["train_images"] == str(report.train_counts[0])


@pytest.mark.parametrize("fmt, suffix", [("markdown", ".md"), ("md", ".md"), ("json", ".json"), ("csv", ".csv")])
def test_write_report_in_each_format(run, tmp_path, fmt, suffix):
    report = build_report(run)
    path = write_report(report, fmt, tmp_path / "out")
    assert path == tmp_path / "out" / f"report{suffix}"
    expected = {".md": report_markdown, ".json": report_json, ".csv": report_csv}[suffix](report)
    assert path.read_text() == expected
    if suffix == ".md":
        assert expected.startswith("## Report: run-a\n") and "| 1 | Ann_A | 0 | 3 |" in expected
    elif suffix == ".json":
        assert json.loads(expected)["averages"]["overall_accuracy"] == pytest.approx(6 / 11)
    else:
        assert expected.splitlines()[1] == "0,Ann_A,3,4,8,1.0000,0.7500,1.0000,0.8750,0.9062,0.8571"


def test_unknown_format_and_negative_k_are_usage_errors(run, tmp_path):
    with pytest.raises(UsageError, match="--format 'html'"):
        write_report(build_report(run), "html", tmp_path)
    with pytest.raises(UsageError, match="--top must be 0 or more"):
        build_report(run, top=-1)


def test_compare_runs_side_by_side(run, tmp_path):
    other = Run.open(make_run(tmp_path / "run-b", Y_TRUE, Y_TRUE, arch="tronnet", val_loss=1.2))
    comparison = compare_runs([run, other])
    assert comparison.runs == ["run-a", "run-b"]
    rows = dict(comparison.rows)
    assert rows["Aggregated"][1] == 1.0
    assert rows["Accuracy"][0] == rows["Balanced accuracy"][0]
    assert rows["Validation loss"] == pytest.approx([1.5 + 1 / 3 + 0.1, 1.2 + 1 / 3])
    text = write_comparison(comparison, "markdown", tmp_path).read_text()
    assert "| Metric | run-a | run-b |" in text
    assert "tronnet · plain · holdout" in text
    with pytest.raises(UsageError, match="at least two runs"):
        compare_runs([run])


def test_missing_predictions_is_a_clear_error(tmp_path):
    path = make_run(tmp_path / "unfinished", Y_TRUE, Y_PRED)
    (path / "predictions.npz").unlink()
    with pytest.raises(FacekitError, match="predictions.npz is missing"):
        build_report(Run.open(path))


@pytest.mark.slow
def test_reporters_render_tables_and_plots(run, tmp_path):
    console = Console(record=True, width=140)
    context = ReportContext(run=run, report=build_report(run), console=console, out_dir=tmp_path / "plots")
    builtin_reporters.render_tables(context)
    written = builtin_reporters.render_plots(context)
    text = console.export_text()
    assert "Top 5 classes by aggregated score" in text and "Most common confusions" in text
    assert "nan" not in text.lower()
    assert [p.name for p in written] == ["loss_curves.png", "confusion_matrix.png", "score_vs_training_images.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert context.written == written


@pytest.mark.slow
def test_many_classes_get_distribution_plots_and_no_probs_read(tmp_path):
    from benchmarks.scale import fabricate_run

    path = tmp_path / "large"
    fabricate_run(path, classes=2000, per_class=3)  # probs: 2000 x 2000 float32 = 16 MB
    run = Run.open(path)
    tracemalloc.start()
    try:
        report = build_report(run, top=3, worst=3, confusions=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB: were the probabilities read?"
    assert [len(t.rows) for t in report.tables()[:2]] == [3, 3]  # per-class tables stay --top/--worst long
    assert report.metrics.total == 2000 and len(report.class_rows()) == 2000

    context = ReportContext(run=run, report=report, console=Console(record=True), out_dir=tmp_path / "plots")
    written = builtin_reporters.render_plots(context)
    assert [p.name for p in written] == ["loss_curves.png", "top_confusions.png", "score_distribution.png"]
    for png in written:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_register_reporters_hook():
    registered = []
    builtin_reporters.register_reporters(register=registered.append)
    assert [(spec.name, spec.default) for spec in registered] == [("table", True), ("plots", True)]


# CLI ----------------------------------------------------------------------------------------


def run_cli(args: list[str]) -> tuple[int, str]:
    """The two commands mounted as the root CLI mounts them; a FacekitError becomes its exit code."""
    runner = CliRunner()
    app = typer.Typer()
    app.command("report")(report_cmd.report)
    app.command("kernels")(report_cmd.kernels)
    result = runner.invoke(app, args)
    if isinstance(result.exception, FacekitError):
        return result.exception.exit_code, result.output + f"Error: {result.exception}"
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture
def builtin_reporters_only(monkeypatch):
    """The reporter registry without needing facekit installed (its entry points)."""
    specs = []
    builtin_reporters.register_reporters(register=specs.append)
    monkeypatch.setattr(
        report_cmd, "select_reporters",
        lambda names: [s for s in specs if (s.name in names if names else s.default)],
    )


def test_cli_report_latest_run_with_format(tmp_path, builtin_reporters_only):
    make_run(tmp_path / "runs" / "run-a", Y_TRUE, Y_PRED)
    code, output = run_cli(["report", "--runs-dir", str(tmp_path / "runs"), "--format", "json", "--reporter", "table"])
    assert code == 0, output
    assert "Top 5 classes" in output
    written = tmp_path / "runs" / "run-a" / "report" / "report.json"
    assert json.loads(written.read_text())["run"].endswith("run-a")
    assert "report.json" in output.replace("\n", "")


@pytest.mark.slow
def test_cli_report_default_reporters_list_their_files(tmp_path, builtin_reporters_only):
    run = make_run(tmp_path / "run-a", Y_TRUE, Y_PRED, folds=3)
    code, output = run_cli(["report", str(run), "--top", "2", "--worst", "2", "--format", "markdown"])
    assert code == 0, output
    assert output.index("Top 2 classes") < output.index("Wrote")
    for name in ("loss_curves.png", "confusion_matrix.png", "score_vs_training_images.png", "report.md"):
        assert (run / "report" / name).is_file()
        assert name in output


def test_cli_report_compare(tmp_path, builtin_reporters_only):
    a = make_run(tmp_path / "a", Y_TRUE, Y_PRED)
    b = make_run(tmp_path / "b", Y_TRUE, Y_TRUE)
    code, output = run_cli(["report", str(a), "--compare", str(b), "--format", "csv", "--out", str(tmp_path / "cmp")])
    assert code == 0, output
    assert "Runs compared" in output
    lines = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
    assert lines[0] == "metric,a,b"
    assert lines[3] == "Precision,0.4500,1.0000"  # 4 decimals, not float noise


def run_cli_stdout(args: list[str]):
    """The report command's exit code, stdout alone and stderr alone."""
    app = typer.Typer()
    app.command("report")(report_cmd.report)
    app.command("kernels")(report_cmd.kernels)
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_report_json_prints_only_json(tmp_path, builtin_reporters_only):
    run = make_run(tmp_path / "run-a", Y_TRUE, Y_PRED, folds=3)
    code, stdout, stderr = run_cli_stdout(["report", str(run), "--json", "--top", "2", "--format", "csv"])
    assert code == 0, stderr
    data = json.loads(stdout)  # the whole of stdout, nothing else
    assert data == json.loads(report_json(build_report(Run.open(run), top=2)))
    assert [row["class"] for row in data["top"]] == ["Ann_A", "Bob_B"]
    assert "Top 2 classes" not in stdout + stderr  # no tables in --json mode
    assert (run / "report" / "report.csv").is_file() and "report.csv" in stderr
    assert not (run / "report" / "confusion_matrix.png").exists()  # no default reporters with --json


def test_cli_report_compare_keeps_the_order_given(tmp_path, builtin_reporters_only):
    a, b, c = (make_run(tmp_path / name, Y_TRUE, Y_TRUE if name == "b" else Y_PRED) for name in "abc")
    code, stdout, _ = run_cli_stdout(["report", str(a), "--compare", str(c), "--compare", str(b), "--json"])
    assert code == 0
    data = json.loads(stdout)
    assert data["runs"] == ["a", "c", "b"]
    assert data["metrics"]["Aggregated"]["b"] == 1.0
    # Every spelling keeps the order typed: the README's `--compare A B` included.
    for args, order in (
        (["--compare", str(b), "--compare", str(a)], ["b", "a"]),
        (["--compare", str(c), str(a), str(b)], ["c", "a", "b"]),
        ([str(b), str(c)], ["b", "c"]),
        ([str(c), str(b), "--compare"], ["c", "b"]),
    ):
        code, stdout, _ = run_cli_stdout(["report", *args, "--json"])
        assert code == 0 and json.loads(stdout)["runs"] == order, args


def test_cli_report_compare_needs_two_runs(tmp_path, builtin_reporters_only):
    a = make_run(tmp_path / "a", Y_TRUE, Y_PRED)
    code, output = run_cli(["report", "--compare", str(a)])
    assert code == 2 and "--compare needs two or more run folders" in output


def test_cli_report_errors(tmp_path, builtin_reporters_only):
    code, output = run_cli(["report", "--runs-dir", str(tmp_path / "none")])
    assert code == 2 and "no runs found" in output
    code, output = run_cli(["report", str(tmp_path)])
    assert code == 2 and "is not a facekit run" in output
