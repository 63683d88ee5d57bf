"""The commands shown in docs/*.md, run on tiny synthetic data, print what the pages say.

Like datasette's tests/test_docs.py: every ``$ facekit ...`` line of a page is either run here and
its output compared with the lines under it, or listed in MEASURED with the reason it cannot be
(a result of training on real faces for minutes). A command added to a page without either
fails the first test, so examples cannot drift unnoticed.
"""

import io
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from facekit.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))

# Output of training on real data (minutes on a CPU): its figures are measurements, not checked here.
MEASURED = {
    "facekit train --data lfw_tiny20 --arch baseline --split kfold --folds 3": "20 epochs on lfw_tiny20",
    "facekit report runs/baseline-kfold3 --confusions 8 --format markdown": "the figures of that run",
    "facekit report runs/baseline-kfold3 --compare runs/tronnet-holdout --format markdown": "the figures of two such runs",
}


def examples() -> list[tuple[str, int, str, list[str]]]:
    """``(page, line number, command, output lines)`` of every ``$ facekit`` line in a code block."""
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        in_block = False
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("```"):
                in_block = not in_block
            elif in_block and line.startswith("$ facekit"):
                start = i
                command = line[2:]
                while command.endswith("\\"):  # continued on the next line
                    i += 1
                    command = command[:-1].rstrip() + " " + lines[i].strip()
                output = []
                while i + 1 < len(lines) and not lines[i + 1].startswith(("```", "$ ")):
                    i += 1
                    output.append(lines[i])
                found.append((page.name, start + 1, command, output))
            i += 1
    return found


def _key(command: str) -> str:
    return next((known for known in [*MEASURED, *CHECKED] if command.startswith(known)), "")


# ----------------------------------------------------------------------------- set-ups
def _faces_with_problems(folder: Path) -> None:
    """data.md's example set: 4 identities of 6 images, three bad files and an empty identity."""
    from facekit.data.synth import make_synthetic_dataset

    faces = make_synthetic_dataset(folder / "faces", identities=4, per_identity=6, size=64, seed=0)
    (faces / "person_00" / "notes.jpg").write_text("my notes, not a photo\n")
    (faces / "person_01" / "empty.png").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 60)).save(jpeg, format="JPEG")
    (faces / "person_02" / "cut.jpg").write_bytes(jpeg.getvalue()[:300])
    (faces / "person_04").mkdir()
    (faces / "person_04" / "readme.txt").write_text("no photos yet\n")


def _baseline_run(folder: Path) -> None:
    """kernels.md's run: a baseline trained briefly with 3 folds (the layers, not the weights, are shown)."""
    from facekit.data.synth import make_synthetic_dataset

    faces = make_synthetic_dataset(folder / "faces", identities=4, per_identity=9, size=48, seed=0)
    result = CliRunner().invoke(app, [
        "train", "--data", str(faces), "--out", "runs/baseline-kfold3", "--split", "kfold", "--folds", "3",
        "--epochs", "1", "--input-size", "48", "--loader", "torch", "--workers", "0", "--threads", "1", "-q",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output


def _synthetic_faces(folder: Path) -> None:
    from facekit.data.synth import make_synthetic_dataset

    make_synthetic_dataset(folder / "faces", identities=8, per_identity=20, size=64, seed=0)


def _bad_config_files(folder: Path) -> None:
    """train.md's config files with a mistake each."""
    (folder / "epochs.yaml").write_text("data: faces\nepochs: ten\n")
    (folder / "typo.yaml").write_text("data: faces\nlrr: 0.01\n")


def _nothing(folder: Path) -> None:
    pass


def _masked(text: str) -> str:
    """Figures a machine measures (losses, speeds) as '#': the lines are compared, not the numbers."""
    return re.sub(r"\d+(\.\d+)?", "#", text)


# command prefix -> (set-up, compare numbers exactly)
CHECKED = {
    "facekit data check faces --split kfold --folds 5": (_faces_with_problems, True),
    "facekit data synth demo --identities 4 --per-identity 6 --size 64": (_nothing, True),
    "facekit kernels runs/baseline-kfold3": (_baseline_run, True),
    "facekit train --data faces --epochs 6 --lr 1e-3 --input-size 64": (_synthetic_faces, False),
    "facekit train --config epochs.yaml": (_bad_config_files, True),
    "facekit train --config typo.yaml": (_bad_config_files, True),
}


def test_every_command_in_the_docs_is_checked_or_measured():
    unknown = [f"{page}:{line}: {command}" for page, line, command, _ in examples() if not _key(command)]
    assert not unknown, "add these to CHECKED (with a set-up) or MEASURED (with why):\n" + "\n".join(unknown)


def _normalized(lines: list[str]) -> list[str]:
    return [line.rstrip() for line in "\n".join(lines).strip("\n").splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "page, line, command, expected",
    [pytest.param(*example, id=f"{example[0]}:{example[1]}") for example in examples() if _key(example[2]) in CHECKED],
)
def test_a_documented_command_prints_what_the_page_shows(page, line, command, expected, tmp_path, monkeypatch):
    setup, exact = CHECKED[_key(command)]
    if not exact and not _slow_allowed():
        pytest.skip("trains for several seconds (run with FACEKIT_DOCS_SLOW=1)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")  # no line wraps because this machine's temporary path is long
    setup(tmp_path)
    args = shlex.split(command)[1:]
    result = CliRunner().invoke(app, args, terminal_width=200)
    printed = _normalized(result.output.replace(f"{tmp_path}/", "").splitlines())  # paths as the page gives them
    shown = _normalized(expected)
    if not exact:
        printed, shown = [_masked(x) for x in printed], [_masked(x) for x in shown]
    assert printed == shown, f"{page}:{line}: `{command}` printed:\n" + "\n".join(printed)


def _slow_allowed() -> bool:
    import os

    return bool(os.environ.get("FACEKIT_DOCS_SLOW"))
