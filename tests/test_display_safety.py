"""Names from users' files (identity folders, runs, images) never reach a terminal or a report raw:
escape sequences are shown escaped, Rich markup is not interpreted, and report.md escapes HTML and
Markdown. `train` names the identities too small for the split, as `data check` does."""

import shutil

import pytest
from typer.testing import CliRunner

from facekit.cli import app
from facekit.text import markdown_safe, printable

HOSTILE = ["\x1b[2J\x1b[31mclear", "<script>alert(1)", "a|b", "[red]markup"]  # folder names: no "/"


def test_printable_shows_control_characters_escaped():
    assert printable("a\x1b[31mb\x07c\x9bd\u202ee") == "a\\x1b[31mb\\x07c\\x9bd\\u202ee"
    assert printable("George_W_Bush") == "George_W_Bush"
    assert printable("two\nlines", keep="\n") == "two\nlines"


def test_markdown_safe_escapes_html_and_table_syntax():
    assert markdown_safe("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert markdown_safe("a|b") == "a\\|b"
    assert markdown_safe("George_W_Bush") == "George_W_Bush"
    assert markdown_safe("_x_ *y* [z](http://e)") == "\\_x\\_ \\*y\\* \\[z\\](http://e)"


@pytest.fixture(scope="module")
def hostile_run(synthetic_dataset, tmp_path_factory):
    """A run over identities whose folder names hold escape sequences, HTML and markup."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "faces"
    shutil.copytree(synthetic_dataset, data)
    for folder, name in zip(sorted(p for p in data.iterdir() if p.is_dir()), HOSTILE):
        folder.rename(data / name)
    out = root / "run"
    result = CliRunner().invoke(app, [
        "train", "--data", str(data), "--out", str(out), "--input-size", "48", "--epochs", "1", "--batch-size", "8",
        "--loader", "torch", "--workers", "0", "--rotate", "0", "--threads", "1", "--test-size", "0.25", "--val-size", "0.25",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return data, out, result.output


def _assert_no_raw(output: str) -> None:
    assert "\x1b" not in output and "\x9b" not in output, repr(output)


@pytest.mark.slow
def test_terminal_output_never_carries_a_names_escape_sequences(hostile_run, tmp_path):
    data, run, train_output = hostile_run
    _assert_no_raw(train_output)
    image = next((data / HOSTILE[0]).iterdir())
    for args in (
        ["report", str(run), "--out", str(tmp_path / "r")],
        ["data", "check", str(data)],
        ["predict", str(run), str(image)],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        _assert_no_raw(result.output)
        assert "\\x1b[2J" in result.output, f"{args[0]}: the name is shown, escaped"
    assert "[red]markup" in CliRunner().invoke(app, ["report", str(run), "--top", "5", "--out", str(tmp_path / "r")]).output


def test_report_md_escapes_html_and_markdown_in_names(hostile_run, tmp_path):
    _, run, _ = hostile_run
    result = CliRunner().invoke(app, ["report", str(run), "--format", "markdown", "--top", "5", "--reporter", "table", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report.md").read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)" in text
    assert "a\\|b" in text and "\x1b" not in text


def test_train_names_the_identities_too_small_for_the_split(synthetic_dataset, tmp_path):
    data = tmp_path / "faces"
    shutil.copytree(synthetic_dataset, data)
    for extra in sorted((data / "person_03").iterdir())[2:]:
        extra.unlink()
    check = CliRunner().invoke(app, ["data", "check", str(data)])
    assert "person_03" in check.output and "no test image" in check.output
    result = CliRunner().invoke(app, [
        "train", "--data", str(data), "--out", str(tmp_path / "run"), "--input-size", "48", "--epochs", "1",
        "--loader", "torch", "--workers", "0", "--rotate", "0", "--threads", "1",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.replace("\n", " ").split("  ") if "too small for the holdout split" in line)
    assert "person_03 (2 images: no test image)" in " ".join(line.split())
