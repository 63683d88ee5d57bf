"""Nothing a user owns is ever deleted or written through: --force, `data synth --force`, the run
lock, stale temporaries and a failed setup touch only what facekit itself made.

Each refusal is one line (exit 2) and leaves every file as it was.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facekit.cli import app
from facekit.data.synth import make_synthetic_dataset
from facekit.errors import UsageError
from facekit.files import protected_reason, remove_stale_temporaries
from facekit.runs import LOCK_FILE, RunWriter, check_destination, is_run_folder

FAST = ["--input-size", "32", "--epochs", "1", "--batch-size", "8", "--loader", "torch", "--workers", "0", "--threads", "1"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) and a hash of its bytes."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            rel = path.relative_to(folder).as_posix()
            found[rel] = "link" if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def refused(*args) -> str:
    """Run `facekit ARGS`; it must exit 2 with exactly one line, which is returned."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.fixture
def faces(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "faces", identities=2, per_identity=3, size=32)


def test_force_never_empties_the_data_folder_itself_a_parent_or_a_link_to_it(faces, tmp_path):
    (tmp_path / "unrelated.txt").write_text("mine")
    (tmp_path / "data-link").symlink_to(faces)
    before = snapshot(tmp_path)
    for out in (faces, tmp_path, tmp_path / "data-link", faces / ".." / "faces"):
        line = refused("train", "--data", faces, "--out", out, "--force", *FAST)
        assert "data folder" in line and "nothing was" in line, line
    assert snapshot(tmp_path) == before


def test_out_inside_the_data_folder_is_refused_with_or_without_force(faces):
    before = snapshot(faces)
    for extra in ([], ["--force"]):
        line = refused("train", "--data", faces, "--out", faces / "person_00" / "run", *FAST, *extra)
        assert "inside the data folder" in line
    assert snapshot(faces) == before


def test_default_run_folder_inside_the_data_folder_is_refused(faces, monkeypatch):
    monkeypatch.chdir(faces)
    with pytest.raises(UsageError, match="inside the data folder"):
        RunWriter.create_new(Path("runs") / "x", data=Path("."))
    line = refused("train", "--data", ".", *FAST)  # before any indexing: one line, nothing written
    assert "would be inside the data folder" in line
    assert not (faces / "runs").exists()


def test_force_never_empties_a_folder_that_is_not_a_run(faces, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "README").write_text("mine")
    inside = project / "src"
    monkeypatch.chdir(inside)
    cases = {
        home: "home folder",
        project: "holds the current folder",
        Path("/"): "holds the data folder",
        Path("."): "not a facekit run folder",  # the current folder, holding other things
    }
    (inside / "main.py").write_text("print()")
    before = snapshot(tmp_path)
    for out, reason in cases.items():
        line = refused("train", "--data", faces, "--out", out, "--force", *FAST)
        assert reason in line and "nothing was deleted" in line, line
    assert snapshot(tmp_path) == before


def test_a_folder_with_a_stray_config_json_is_not_a_run(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text('{"name": "my project"}')
    (folder / "split.json").write_text("[]")
    assert not is_run_folder(folder)
    with pytest.raises(UsageError, match="not a facekit run folder .*config.json, split.json"):
        check_destination(folder, force=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "split.json"]


def test_force_replaces_a_finished_run_and_an_interrupted_setup(facekit_run, tmp_path):
    import shutil

    finished = tmp_path / "finished"
    shutil.copytree(facekit_run, finished)
    assert is_run_folder(finished)
    RunWriter.create(finished, force=True).close()
    assert [p.name for p in finished.iterdir()] == [LOCK_FILE]

    interrupted = tmp_path / "interrupted"  # killed while writing its setup: no config.json yet
    interrupted.mkdir()
    for name in ("classes.json", "split.json", LOCK_FILE, ".split.json.k2j4abcd.tmp"):
        (interrupted / name).write_text("{}")
    assert is_run_folder(interrupted)
    RunWriter.create(interrupted, force=True).close()
    assert [p.name for p in interrupted.iterdir()] == [LOCK_FILE]


def test_a_run_folder_that_holds_the_data_is_not_emptied(facekit_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(facekit_run, run)
    faces = make_synthetic_dataset(run / "faces", identities=2, per_identity=2, size=32)
    with pytest.raises(UsageError, match="holds the data folder"):
        RunWriter.create(run, force=True, data=faces)
    assert (faces / "person_00" / "000.png").is_file()


def test_a_lock_file_that_is_a_link_is_never_written_through(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).symlink_to(target)
    with pytest.raises(UsageError, match=r"\.lock is a symbolic link"):
        RunWriter.create(run, force=True)
    with pytest.raises(UsageError, match=r"\.lock is a symbolic link"):
        RunWriter.open(run)
    assert target.read_text() == "keep me"


def test_only_facekit_temporaries_are_cleaned_up(tmp_path):
    mine = tmp_path / ".notes.tmp"  # a user's own dot-file
    mine.write_text("mine")
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    (tmp_path / ".split.json.ab12cd34.tmp").write_text("{")  # left by a killed atomic_write
    (tmp_path / ".x.json.zz99yy88.tmp").symlink_to(target)
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".split.json.ab12cd34.tmp"]
    assert mine.read_text() == "mine" and target.read_text() == "keep"


def test_a_failed_setup_removes_only_its_own_files(tmp_path):
    out = tmp_path / "run"
    writer = RunWriter.create(out, force=False)
    (out / "classes.json").write_text("[]")
    (out / "user-notes.txt").write_text("written meanwhile")
    writer.discard()
    assert sorted(p.name for p in out.iterdir()) == ["user-notes.txt"]
    empty = RunWriter.create(tmp_path / "run2", force=False)
    empty.discard()
    assert not (tmp_path / "run2").exists()


def test_protected_reason_resolves_links_and_dot_dots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "a" / "faces"
    data.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "a")
    assert "holds the data folder" in protected_reason(tmp_path / "alias", [data])
    assert "is the data folder" in protected_reason(tmp_path / "a" / "x" / ".." / "faces", [data])
    assert protected_reason(tmp_path / "a" / "runs", [data]) is None


# ------------------------------------------------------------------------------- data synth --force
def test_synth_force_replaces_only_a_synthetic_set(tmp_path, monkeypatch):
    runner = CliRunner()
    made = tmp_path / "made"
    assert runner.invoke(app, ["data", "synth", str(made), "--identities", "2", "--per-identity", "1"]).exit_code == 0
    assert runner.invoke(app, ["data", "synth", str(made), "--identities", "3", "--per-identity", "1", "--force"]).exit_code == 0
    assert len([p for p in made.iterdir() if p.is_dir()]) == 3

    real = tmp_path / "real"
    (real / "alice").mkdir(parents=True)
    (real / "alice" / "holiday.jpg").write_bytes(b"mine")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(tmp_path)
    for out, reason in ((real, "not a data set made by `facekit data synth`"), (home, "home folder"), (Path("/"), "root")):
        line = refused("data", "synth", out, "--force")
        assert reason in line and "nothing was deleted" in line, line
    assert "--force" not in refused("data", "synth", real)  # not offered where it would be refused
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------- the other caches
def test_index_and_statistics_cache_files_that_are_links_are_replaced_not_written_through(faces, tmp_path):
    from facekit.data.index import cache_dir, index_dataset
    from facekit.data.stats import cached_channel_sums
    from facekit.training.progress import SilentProgress

    index = index_dataset(faces)
    sums = cached_channel_sums(index.paths(), 32, SilentProgress())
    planted = []
    for entry in [*(cache_dir() / "index").glob("*.json"), *(cache_dir() / "stats").glob("*")]:
        victim = tmp_path / f"victim-{entry.name}"
        victim.write_bytes(b"precious " * 10)
        entry.unlink()
        entry.symlink_to(victim)
        planted.append((entry, victim))
    assert len(planted) == 3  # the index entry, the sums and their checksum
    again = index_dataset(faces)
    assert again.files == index.files
    assert (cached_channel_sums(index.paths(), 32, SilentProgress()) == sums).all()
    for entry, victim in planted:
        assert victim.read_bytes() == b"precious " * 10
        assert not entry.is_symlink() and entry.is_file()


def test_an_unreadable_out_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x").write_text("mine")
    locked.chmod(0o000)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("this user reads any folder (root)")
        with pytest.raises(UsageError, match="cannot be read"):
            check_destination(locked, force=True)
    finally:
        locked.chmod(0o755)
