"""The commands as a user types them (in-process, through the same Typer app)."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facekit.cli import app
from facekit.runs import Run
import _testutil

runner = CliRunner()
FAST = _testutil.FAST

SPLIT_AND_REPORTER_PLUGIN = """
import numpy as np
from facekit import hookimpl
from facekit.api import Fold, ReporterSpec, SplitPlan, SplitSpec

def every_other(labels, options):
    index = np.arange(len(labels))
    return SplitPlan(test=index[::4], folds=[Fold(train=index[index % 4 >= 2], val=index[index % 4 == 1])])

def render_count(context):
    context.console.print(f"predictions: {len(context.run.predictions()['y_true'])}")

@hookimpl
def register_splits(register):
    register(SplitSpec("every-other", every_other, "Test: every 4th image."))

@hookimpl
def register_reporters(register):
    register(ReporterSpec("count", render_count, "How many test predictions.", default=False))
"""


invoke = _testutil.invoke


@pytest.fixture(scope="module")
def trained_run(synthetic_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("train", "--data", synthetic_dataset, "--out", out, "--json", *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["run"] == str(out) and 0 <= summary["balanced_accuracy"] <= 1
    return out


@pytest.mark.slow
def test_train_refuses_to_overwrite_and_report_reads_the_run(trained_run, synthetic_dataset):
    again = invoke("train", "--data", synthetic_dataset, "--out", trained_run, *FAST)
    assert again.exit_code == 2 and "already exists" in again.output
    report = runner.invoke(app, ["report", str(trained_run), "--reporter", "table"], env={"COLUMNS": "80"})
    assert report.exit_code == 0, report.output
    # In an 80-column terminal the class column keeps whole names (the headers shorten instead).
    assert re.search(r"│ 1 │ person_\d\d ", report.output), report.output


def test_predict_prints_top_k_identities(trained_run, synthetic_dataset):
    image = next((synthetic_dataset / "person_01").iterdir())
    result = invoke("predict", trained_run, image, "--top-k", "3", "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)  # a note may go to stderr
    assert entry["file"] == str(image) and len(entry["top"]) == 3
    probabilities = [guess["probability"] for guess in entry["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert {guess["name"] for guess in entry["top"]} <= set(Run(trained_run).classes)


def test_predict_names_an_unreadable_file(trained_run, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    result = invoke("predict", trained_run, bad)
    assert result.exit_code == 2 and "notes.jpg is not a readable image" in result.output


def test_resume_of_a_finished_run_keeps_its_results(trained_run):
    before = Run(trained_run).history
    result = invoke("train", "--resume", trained_run, "--quiet")
    assert result.exit_code == 0, result.output
    assert Run(trained_run).history == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["train"], "--data DIR is required"),
        (["train", "--data", "/nonexistent/faces"], "/nonexistent/faces"),
        (["train", "--data", "{data}", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "--data", "{data}", "--device", "cuda:7"], "--device"),
        (["train", "--data", "{data}", "--threads", "0"], "--threads must be at least 1"),
        (["report", "/nonexistent/run"], "not a facekit run"),
        (["predict", "/nonexistent/run", "x.jpg"], "not a facekit run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, synthetic_dataset):
    result = invoke(*[a.replace("{data}", str(synthetic_dataset)) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.strip().count("\n") == 0, result.stderr


def test_a_plugin_split_and_reporter_work_end_to_end(facekit_plugin, synthetic_dataset, tmp_path):
    facekit_plugin(SPLIT_AND_REPORTER_PLUGIN, package="facekit-splitter")
    out = tmp_path / "run"
    result = invoke("train", "--data", synthetic_dataset, "--split", "every-other", "--out", out, "--quiet", *FAST)
    assert result.exit_code == 0, result.output
    run = Run(out)
    assert run.split["strategy"] == "every-other"
    assert run.split["test"] == list(range(0, len(run.split["files"]), 4))
    report = invoke("report", out, "--reporter", "count")
    assert report.exit_code == 0, report.output
    assert f"predictions: {len(run.split['test'])}" in report.output



def _plugin_commands_app():
    """The commands installed plugins add (facekit align among them), on an app of their own."""
    from facekit.cli.help import ReadableTyper
    from facekit.plugins import get_plugins

    plugin_app = ReadableTyper()
    plugin_app.callback()(lambda: None)  # stay a group even with a single plugin command
    get_plugins().add_commands(plugin_app)
    return plugin_app


def _commands(group, path=()):
    for name, command in sorted(getattr(group, "commands", {}).items()):
        yield (*path, name), command
        yield from _commands(command, (*path, name))


def _every_command():
    import typer.main

    yield pytest.param(app, (), typer.main.get_command(app), id="facekit")
    for typer_app in (app, _plugin_commands_app()):
        for path, command in _commands(typer.main.get_command(typer_app)):
            yield pytest.param(typer_app, path, command, id=" ".join(path))


@pytest.mark.parametrize("typer_app, path, command", list(_every_command()))
def test_every_help_is_readable_at_80_columns(typer_app, path, command):
    """No Python type tags, no {arg} braces, nothing cut off with '…', and every option explained."""
    from typer.core import TyperArgument, TyperOption

    result = CliRunner().invoke(typer_app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    for bad in ("<bool>", "<int", "<float", "<str", "<path", "list[", "{", "…"):
        assert bad not in result.output, f"{' '.join(path)} --help shows {bad!r}:\n{result.output}"
    assert max(map(len, result.output.splitlines())) <= 80
    for param in command.params:
        if isinstance(param, (TyperOption, TyperArgument)):
            assert (getattr(param, "help", None) or "").strip(), f"{' '.join(path)}: {param.name} has no help"
