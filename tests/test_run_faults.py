"""Training and run folders under misuse and failure: concurrent runs, divergence, bad settings,
failed starts, full or read-only disks, damaged files, Ctrl-C. Each case ends in one clear line
(exit 2 for usage, 1 for run-time problems), with nothing lost and nothing half-made left behind."""

import errno
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facekit.engine import Trainer, TrainConfig, TrainingDiverged, TrainingInterrupted
from facekit.errors import FacekitError, UsageError
from facekit.runs import CHECKPOINTS, LOCK_FILE, Run, RunWriter, latest_run, load_checkpoint
import _testutil
from _testutil import InterruptAt, fast, invoke, one_line_error

REPO = Path(__file__).resolve().parents[1]
FAST = fast(epochs=2, lr="1e-3")


def config(data: Path, out: Path | None, **overrides) -> TrainConfig:
    return _testutil.config(data, out, **({"input_size": 48, "threads": 1} | overrides))


def subprocess_env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------ 1
def test_a_run_folder_has_one_owner_at_a_time(tmp_path):
    """Locked by create and open; a second writer is refused, even with --force; closing releases it."""
    out = tmp_path / "run"
    owner = RunWriter.create(out, force=False)
    for attempt in (lambda: RunWriter.create(out, force=False), lambda: RunWriter.create(out, force=True), lambda: RunWriter.open(out)):
        with pytest.raises(UsageError, match=rf"run folder .*run is in use by another facekit process \(pid {os.getpid()}\)"):
            attempt()
    owner.close()
    RunWriter.open(out).close()


@pytest.mark.slow
def test_two_trainings_into_one_out_never_mix(synthetic_dataset, tmp_path):
    """While one `facekit train` trains into --out, a second one (even with --force) and a resume exit 2
    naming its pid; once it is killed (kill -9), the folder is free again."""
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "facekit", "train", "--data", str(synthetic_dataset), "--out", str(out), *FAST, "--epochs", "10000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / "config.json").is_file():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() is not None else "no setup"
            time.sleep(0.2)
        setup = {name: (out / name).read_bytes() for name in ("config.json", "split.json", "classes.json")}
        for command in (["train", "--data", synthetic_dataset, "--out", out, *FAST, "--seed", "7"],
                        ["train", "--data", synthetic_dataset, "--out", out, *FAST, "--force"],
                        ["train", "--resume", out]):  # fmt: skip
            line = one_line_error(invoke(*command), 2)
            assert f"{out} is in use by another facekit process (pid {first.pid})" in line
        assert {name: (out / name).read_bytes() for name in setup} == setup, "the first run's setup is untouched"
    finally:
        first.kill()  # kill -9: the kernel releases the lock with the process
        first.wait()
    RunWriter.open(out).close()
    result = invoke("train", "--data", synthetic_dataset, "--out", out, *FAST, "--force")
    assert result.exit_code == 0, result.output
    assert Run(out).has_predictions and Run(out).config["epochs"] == 2


def test_a_second_training_into_a_finished_run_is_refused_and_changes_nothing(synthetic_dataset, tmp_path):
    out = Trainer(config(synthetic_dataset, tmp_path / "run", epochs=1)).train()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    with pytest.raises(UsageError, match="already exists"):
        Trainer(config(synthetic_dataset, out, epochs=1, seed=9)).train()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE} == before


def test_default_run_names_started_in_the_same_second_never_collide(synthetic_dataset, tmp_path, monkeypatch):
    import datetime

    class FrozenClock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 26, 10, 15, 0)

    monkeypatch.setattr("facekit.runs._dt.datetime", FrozenClock)
    monkeypatch.chdir(tmp_path)
    first = Trainer(config(synthetic_dataset, None, epochs=1, seed=1)).train()
    second = Trainer(config(synthetic_dataset, None, epochs=1, seed=2)).train()
    assert first == Path("runs/20261126-101500-baseline-plain")
    assert second == Path("runs/20261126-101500-baseline-plain-2")
    assert Run(first).config["seed"] == 1 and Run(second).config["seed"] == 2
    assert Run(first).has_predictions and Run(second).has_predictions
    # Two processes that pick a name at the same moment: the folder is made atomically, the loser takes the next.
    base = tmp_path / "runs" / "20261126-101600-x"
    holders = [RunWriter.create_new(base) for _ in range(3)]
    assert [w.path.name for w in holders] == [base.name, f"{base.name}-2", f"{base.name}-3"]
    for writer in holders:
        writer.close()


# ------------------------------------------------------------------------------------------ 2
@pytest.mark.parametrize(
    "option, value",
    [("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"), ("--lr", "0"), ("--weight-decay", "-1"), ("--weight-decay", "nan"),
     ("--patience", "-3"), ("--epochs", "0"), ("--batch-size", "0"), ("--test-size", "0"), ("--test-size", "1"),
     ("--test-size", "nan"), ("--val-size", "-0.1"), ("--val-size", "1"), ("--workers", "-1"), ("--threads", "0"),
     ("--input-size", "0"), ("--input-size", "16"), ("--input-size", "100000"), ("--seed", "-1"), ("--rotate", "nan"),
     ("--loader", "fast")],
)  # fmt: skip
def test_bad_settings_are_refused_before_any_folder_is_made(option, value, synthetic_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a for a in FAST]
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    line = one_line_error(invoke("train", "--data", synthetic_dataset, *args), 2)
    assert line.startswith(f"Error: {option} must be")
    got = line.rsplit("(got ", 1)[1].rstrip(")")
    if option == "--loader":
        assert got == value
    else:
        assert float(got) == float(value) or math.isnan(float(got)) and math.isnan(float(value))
    assert not (tmp_path / "runs").exists()


def diverge_after(monkeypatch, fold: int, epoch: int) -> None:
    """Make training diverge in ``fold`` at ``epoch``: its pass leaves a weight NaN, as a too high --lr does."""
    real_fold, real_epoch = Trainer._train_fold, Trainer.train_epoch
    where = {}

    def train_fold(self, record, fold_index, state):
        where["fold"], where["epoch"] = fold_index, state.epoch if state is not None else 0
        return real_fold(self, record, fold_index, state)

    def train_epoch(self, model, loader, *args):
        result = real_epoch(self, model, loader, *args)
        where["epoch"] += 1
        if (where["fold"], where["epoch"]) == (fold, epoch):
            with torch.no_grad():
                next(model.parameters()).fill_(math.nan)
        return result

    monkeypatch.setattr(Trainer, "_train_fold", train_fold)
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def test_a_diverging_run_stops_with_its_last_good_state_reportable_and_resumable(synthetic_dataset, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        diverge_after(patch, fold=0, epoch=3)
        with pytest.raises(TrainingDiverged, match=r"diverged in fold 0 at epoch 3: .*--lr 0.001 is too high.*best epoch before it \(\d\)"):
            Trainer(config(synthetic_dataset, tmp_path / "run", epochs=5)).train()
    run = Run(tmp_path / "run")
    assert [row["epoch"] for row in run.history] == [1, 2]
    for name in ("fold-0-last.pt", "fold-0-best.pt", "best.pt"):
        state = load_checkpoint(run.path / CHECKPOINTS / name)
        assert state["epoch"] <= 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert run.folds["folds"][0]["best_epoch"] in (1, 2)
    predictions = run.predictions()  # reportable from the last good state
    assert np.isfinite(predictions["probs"]).all()
    assert latest_run(tmp_path) == run.path
    before = predictions["probs"].copy()
    Trainer.resume(run.path)  # resumable: the diverged fold is done, the results are written again
    assert np.array_equal(Run(run.path).predictions()["probs"], before)


def test_divergence_before_any_epoch_finished_says_so_and_resume_says_it_again(synthetic_dataset, tmp_path, monkeypatch):
    diverge_after(monkeypatch, fold=0, epoch=1)
    with pytest.raises(TrainingDiverged, match="epoch 1: .* No epoch had finished before it, so the run has no results"):
        Trainer(config(synthetic_dataset, tmp_path / "run")).train()
    assert not (tmp_path / "run" / CHECKPOINTS).exists()
    with pytest.raises(UsageError, match="no runs found with results"):
        latest_run(tmp_path)
    line = one_line_error(invoke("train", "--resume", tmp_path / "run"), 1)
    assert "diverged in fold 0 at epoch 1" in line


def test_a_diverging_kfold_run_keeps_its_finished_folds(synthetic_dataset, tmp_path, monkeypatch):
    diverge_after(monkeypatch, fold=1, epoch=2)
    with pytest.raises(TrainingDiverged, match=r"fold 1 at epoch 2: .*fold 2 was not trained \(`facekit train --resume"):
        Trainer(config(synthetic_dataset, tmp_path / "run", split="kfold", folds=3)).train()
    run = Run(tmp_path / "run")
    assert [f["fold"] for f in run.folds["folds"]] == [0, 1] and run.has_predictions
    monkeypatch.undo()
    Trainer.resume(run.path)  # trains the last fold
    assert [f["fold"] for f in Run(run.path).folds["folds"]] == [0, 1, 2]


# ------------------------------------------------------------------------------------------ 6
@pytest.mark.slow
def test_weights_problems_fail_before_any_folder_is_made(synthetic_dataset, tmp_path, monkeypatch):
    import pickle

    from torchvision.models._api import WeightsEnum

    from facekit.factory import create_model

    monkeypatch.chdir(tmp_path)
    text, pickle_file, other = tmp_path / "notes.pth", tmp_path / "code.pth", tmp_path / "baseline.pth"
    text.write_text("not weights")
    pickle_file.write_bytes(pickle.dumps({"conv.weight": Path("not a tensor")}, protocol=2))  # weights_only refuses it
    torch.save(create_model("baseline", num_classes=3).state_dict(), other)
    base = ["train", "--data", synthetic_dataset, *FAST, "--arch", "resnet18"]
    for weights, problem in ((text, "cannot be read as weights"), (pickle_file, "cannot be read as weights"), (other, "not weights of this network")):
        assert "does not match the published" in one_line_error(invoke(*base, "--weights", weights), 1)
        line = one_line_error(invoke(*base, "--weights", weights, "--trust-weights"), 2)
        assert line.startswith(f"Error: --weights {weights}: {problem}")
        assert "weights_only" not in line and "input-size" not in line
    assert f"--weights {tmp_path / 'missing.pth'}: no such file" in one_line_error(invoke(*base, "--weights", tmp_path / "missing.pth"), 2)
    # No weights at all: nothing cached, no network.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(self, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    assert "could not be downloaded" in one_line_error(invoke(*base), 1)
    assert "takes no pretrained weights" in one_line_error(invoke("train", "--data", synthetic_dataset, *FAST, "--weights", other), 2)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("arch, smallest", [("baseline", 39), ("tronnet", 38)])
def test_input_size_below_an_architectures_real_minimum_names_it(arch, smallest, synthetic_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for size in (32, smallest - 1):
        line = one_line_error(invoke("train", "--data", synthetic_dataset, *FAST, "--arch", arch, "--input-size", size), 2)
        assert line == f"Error: --input-size {size} is too small for architecture '{arch}': give at least {smallest}"
    assert not (tmp_path / "runs").exists()
    Trainer(config(synthetic_dataset, tmp_path / "ok", arch=arch, input_size=smallest)).check_model()


@pytest.mark.slow
def test_latest_is_the_newest_run_with_results(synthetic_dataset, tmp_path, monkeypatch):
    finished = Trainer(config(synthetic_dataset, tmp_path / "runs" / "a-finished", epochs=1)).train()
    time.sleep(0.01)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "runs" / "b-interrupted", epochs=1), InterruptAt(1)).train()
    assert Run.open(None, tmp_path / "runs").path == finished
    monkeypatch.chdir(tmp_path)
    assert invoke("report", "--worst", "5", "--reporter", "table").exit_code == 0
    assert invoke("kernels", "--layer", "3").exit_code == 0
    for command in (["report", "runs/b-interrupted"], ["kernels", "runs/b-interrupted"], ["predict", "runs/b-interrupted", synthetic_dataset]):
        line = one_line_error(invoke(*command), 1)
        assert "has no results yet" in line and "facekit train --resume runs/b-interrupted" in line


def test_resume_removes_what_killed_writers_left(synthetic_dataset, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "run", epochs=3), InterruptAt(2)).train()
    stale = [tmp_path / "run" / CHECKPOINTS / ".fold-0-last.pt.k2j3ab_9.tmp", tmp_path / "run" / ".history.json.x1yz0qrs.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    Trainer.resume(tmp_path / "run")
    assert not any(path.exists() for path in stale)
    assert not list((tmp_path / "run").rglob("*.tmp"))


# ------------------------------------------------------------------------------------------ 7
def fail_checkpoint_writes_from(monkeypatch, epoch: int, error: OSError) -> None:
    """torch.save fails as on a full disk (a RuntimeError whose context is the OSError) from ``epoch`` on."""
    import facekit.runs

    real = facekit.runs.save_checkpoint

    def save(path, payload):
        if payload["epoch"] >= epoch:
            try:
                raise error
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        real(path, payload)

    monkeypatch.setattr(facekit.runs, "save_checkpoint", save)


@pytest.mark.parametrize(
    "error, advice",
    [(OSError(errno.ENOSPC, "No space left on device"), "free some disk space"),
     (OSError(errno.EROFS, "Read-only file system"), "use a writable folder")],
)  # fmt: skip
def test_a_full_or_read_only_disk_during_training_is_one_line_and_resumable(error, advice, synthetic_dataset, tmp_path, monkeypatch):
    straight = Run(Trainer(config(synthetic_dataset, tmp_path / "straight", epochs=3)).train())
    with monkeypatch.context() as patch:
        fail_checkpoint_writes_from(patch, 2, error)
        with pytest.raises(FacekitError) as caught:
            Trainer(config(synthetic_dataset, tmp_path / "run", epochs=3)).train()
    message = str(caught.value)
    assert "\n" not in message and error.strerror in message and advice in message
    assert f"facekit train --resume {tmp_path / 'run'}" in message
    assert load_checkpoint(tmp_path / "run" / CHECKPOINTS / "fold-0-last.pt")["epoch"] == 1  # the previous file intact
    assert not list((tmp_path / "run").rglob("*.tmp"))
    resumed = Run(Trainer.resume(tmp_path / "run"))
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in straight.history], rel=1e-4)


def test_a_full_disk_while_the_setup_is_written_leaves_no_folder(synthetic_dataset, tmp_path, monkeypatch):
    import facekit.runs

    real = facekit.runs.write_json

    def full_at_split(path, data):
        if Path(path).name == "split.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(facekit.runs, "write_json", full_at_split)
    line = one_line_error(invoke("train", "--data", synthetic_dataset, *FAST, "--out", tmp_path / "run"), 1)
    assert line.endswith("No space left on device; free some disk space, then train again")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_real_write_failure_from_torch_is_one_line(synthetic_dataset, tmp_path):
    """The file-size limit makes the kernel refuse the checkpoint's bytes, as a full disk does."""
    script = (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)); "
        "from facekit.cli import main; main()"
    )
    out = tmp_path / "run"
    env = subprocess_env() | {"FACEKIT_CACHE_DIR": str(tmp_path / "cache")}
    args = ["train", "--data", str(synthetic_dataset), "--out", str(out), *FAST]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and error[0].startswith("Error: could not write the run folder: "), done.stderr
    assert "File too large" in error[0] and "facekit train --resume" in error[0], done.stderr
    assert not list(out.rglob("*.tmp"))


def test_read_only_folders_are_one_line(synthetic_dataset, tmp_path, monkeypatch):
    """Tests run as root, where chmod stops nothing: the file system's refusal is simulated."""
    import tempfile

    finished = Trainer(config(synthetic_dataset, tmp_path / "run", epochs=1)).train()
    real_open, real_mkdir = os.open, Path.mkdir

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(args[0]) if args else None)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(os, "open", lambda path, *a, **k: read_only(path) if str(path).endswith(LOCK_FILE) else real_open(path, *a, **k))
    read_only_folders = (tmp_path / "ro", finished)

    def mkdir(self, *args, **kwargs):
        if any(self == folder or folder in self.parents for folder in read_only_folders):
            read_only(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    for command, code, suggests_out in (
        (["train", "--data", synthetic_dataset, *FAST, "--out", tmp_path / "ro" / "new"], 1, False),
        (["train", "--resume", finished], 1, False),
        (["report", finished, "--reporter", "plots"], 1, True),
        (["report", finished, "--format", "markdown"], 1, True),
        (["kernels", finished], 1, True),
        (["kernels", finished, "--out", tmp_path / "ro" / "k"], 1, False),  # --out given: nothing to suggest
    ):
        line = one_line_error(invoke(*command), code)
        assert "Read-only file system" in line and "writable folder" in line, line
        assert ("pass --out DIR to write elsewhere" in line) == suggests_out, line


def test_resume_after_images_were_removed_names_them(synthetic_dataset, tmp_path):
    import shutil

    data = tmp_path / "faces"
    shutil.copytree(synthetic_dataset, data)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(data, tmp_path / "run", epochs=3), InterruptAt(2)).train()
    shutil.rmtree(data / "person_01")
    line = one_line_error(invoke("train", "--resume", tmp_path / "run"), 1)
    assert "8 of the 32 images" in line and "are gone from" in line and "person_01/" in line


@pytest.mark.parametrize(
    "damage, problem",
    [(lambda f: f.write_bytes(f.read_bytes()[:100]), "BadZipFile"),
     (lambda f: np.savez(f, a=np.zeros(3)), "KeyError"),
     (lambda f: np.savez(f, index=np.arange(2), y_true=np.zeros(2, int), y_pred=np.zeros(2, int), probs=np.zeros((2, 9))),
      "arrays of mismatched shapes"),
     (lambda f: np.savez(f, index=np.arange(2), y_true=np.array([0, 7]), y_pred=np.zeros(2, int), probs=np.zeros((2, 4))),
      "class ids outside 0..3"),
     (lambda f: np.savez(f, index=np.arange(2), y_true=np.zeros(2, int), y_pred=np.zeros(2, int), probs=np.full((2, 4), np.nan)),
      "probabilities that are not finite numbers")],
)  # fmt: skip
def test_report_on_damaged_predictions_is_one_line(damage, problem, facekit_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(facekit_run, run)
    damage(run / "predictions.npz")
    line = one_line_error(invoke("report", run), 1)
    assert f"predictions.npz is damaged ({problem}" in line and f"facekit train --resume {run}" in line
    Trainer.resume(run)  # writes them again from the kept model
    assert Run(run).predictions()["probs"].shape[1] == 4


@pytest.mark.parametrize(
    "name, text, problem",
    [("classes.json", '["a", "b"', "JSONDecodeError"), ("classes.json", '{"a": 1}', "it lacks a list"),
     ("split.json", '{"root": "x"}', "it lacks files"), ("config.json", "[]", "it lacks a dict")],
)  # fmt: skip
def test_damaged_run_files_are_one_line(name, text, problem, facekit_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(facekit_run, run)
    (run / name).write_text(text)
    needs = [["report", run], ["train", "--resume", run]] + ([["kernels", run]] if name != "split.json" else [])
    for command in needs:
        line = one_line_error(invoke(*command), 1)
        assert f"{name} is damaged ({problem}" in line, (command, line)


# ------------------------------------------------------------------------------------------ 8
def interrupted_run(data: Path, out: Path, epochs: int = 3, at: int = 2, **overrides) -> Path:
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(data, out, epochs=epochs, **overrides), InterruptAt(at)).train()
    return out


def test_resume_applies_more_epochs_and_refuses_other_changes_by_name(synthetic_dataset, tmp_path):
    run = interrupted_run(synthetic_dataset, tmp_path / "run")
    history = Run(run).history
    line = one_line_error(invoke("train", "--resume", run, "--epochs", "4", "--lr", "0.5", "--arch", "tronnet"), 2)
    assert "--lr 0.5 (it has 0.001)" in line and "--arch tronnet (it has baseline)" in line and "--epochs" in line
    line = one_line_error(invoke("train", "--resume", run, "--data", tmp_path), 2)
    assert f"--data {tmp_path} (it has {synthetic_dataset.resolve()})" in line
    assert Run(run).history == history, "a refused resume trains nothing"
    # The same values as saved are no change; more epochs apply and are kept for later resumes.
    result = invoke("train", "--resume", run, "--epochs", "4", "--lr", "0.001", "--data", synthetic_dataset, "--quiet")
    assert result.exit_code == 0, result.output
    resumed = Run(run)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4] and resumed.config["epochs"] == 4
    assert resumed.folds["folds"][0]["best_epoch"] >= 1


@pytest.mark.slow
def test_resume_refuses_fewer_epochs_than_trained_and_changes_after_a_fold_finished(synthetic_dataset, tmp_path):
    run = interrupted_run(synthetic_dataset, tmp_path / "run", epochs=4, at=4)
    assert "has already trained 3 epochs" in one_line_error(invoke("train", "--resume", run, "--epochs", "2"), 2)
    kfold = tmp_path / "kfold"
    with pytest.raises(KeyboardInterrupt):  # fold 0 has finished
        Trainer(config(synthetic_dataset, kfold, split="kfold", folds=3), InterruptAt(2, fold=1)).train()
    for option in (["--patience", "1"], ["--epochs", "3"]):
        line = one_line_error(invoke("train", "--resume", kfold, *option), 2)
        assert f"{' '.join(option)}: fold 0 of {kfold} has finished" in line
    history = Run(kfold).history
    assert invoke("train", "--resume", kfold, "--threads", "2").exit_code == 0  # where it runs may change
    assert Run(kfold).history[: len(history)] == history and len(Run(kfold).folds["folds"]) == 3
    assert Run(kfold).config["threads"] == 1, "for this session only"


def test_no_validation_images_keeps_the_last_epoch_and_says_so(synthetic_dataset, tmp_path):
    messages = []

    class Recording(InterruptAt):
        def message(self, text):
            messages.append(text)

    run = Run(Trainer(config(synthetic_dataset, tmp_path / "run", epochs=3, val_size=0.0, patience=1), Recording(99)).train())
    assert any("no validation images" in m and "last epoch is kept" in m and "--patience" in m for m in messages)
    assert [r["epoch"] for r in run.history] == [1, 2, 3], "patience does not stop a run it cannot judge"
    assert all(math.isnan(r["val_loss"]) for r in run.history)
    assert run.folds["folds"][0]["best_epoch"] == 3
    kept = load_checkpoint(run.path / CHECKPOINTS / "best.pt")
    assert kept["epoch"] == 3


def test_no_validation_shows_a_dash_not_zero(synthetic_dataset, tmp_path):
    result = invoke("train", "--data", synthetic_dataset, *FAST, "--val-size", "0", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "val loss - acc -" in result.stdout and "val loss 0.000" not in result.stdout


# ----------------------------------------------------------------------------------------- 11
def test_kfold_keeps_only_the_checkpoints_resume_and_the_kept_fold_need(synthetic_dataset, tmp_path):
    run = Run(Trainer(config(synthetic_dataset, tmp_path / "run", split="kfold", folds=3, epochs=1)).train())
    kept = run.folds["kept"]
    assert sorted(p.name for p in (run.path / CHECKPOINTS).iterdir()) == sorted({"best.pt", f"fold-{kept}-best.pt", "fold-2-last.pt"})


@pytest.mark.slow
def test_kfold_resume_after_pruning_matches_an_uninterrupted_run(synthetic_dataset, tmp_path):
    straight = Run(Trainer(config(synthetic_dataset, tmp_path / "straight", split="kfold", folds=3, epochs=2)).train())

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "run", split="kfold", folds=3, epochs=2), InterruptAt(2, fold=2)).train()
    resumed = Run(Trainer.resume(tmp_path / "run"))
    assert resumed.folds["kept"] == straight.folds["kept"]
    assert [f["val_loss"] for f in resumed.folds["folds"]] == pytest.approx([f["val_loss"] for f in straight.folds["folds"]], rel=1e-4)
    assert np.array_equal(resumed.predictions()["y_pred"], straight.predictions()["y_pred"])


# ----------------------------------------------------------------------------------------- 12
def test_ctrl_c_prints_the_exact_resume_command(synthetic_dataset, tmp_path, monkeypatch):
    out = tmp_path / "my runs" / "run"
    real = Trainer.train_epoch
    epochs = {"n": 0}

    def interrupted_in_epoch_2(self, *args):
        epochs["n"] += 1
        if epochs["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_epoch", interrupted_in_epoch_2)
        result = invoke("train", "--data", synthetic_dataset, *FAST, "--out", out)
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == f"Interrupted. Continue with: facekit train --resume '{out}'"
    assert invoke("train", "--resume", out).exit_code == 0
    assert [r["epoch"] for r in Run(out).history] == [1, 2]


def test_an_interrupted_training_names_its_folder(synthetic_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainingInterrupted) as caught:
        Trainer(config(synthetic_dataset, None), InterruptAt(1)).train()
    assert caught.value.run_dir is not None and (tmp_path / caught.value.run_dir / "config.json").is_file()


NOTHING_TO_TRAIN = """
from facekit import hookimpl
from facekit.api import ArchitectureSpec

def build(options):
    from torch import nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, options.num_classes))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("frozen-solid", build, "Every layer frozen.", input_size=32))
"""


def test_an_architecture_with_nothing_to_train_fails_before_any_folder_is_made(facekit_plugin, synthetic_dataset, tmp_path):
    facekit_plugin(NOTHING_TO_TRAIN, package="facekit-frozen-solid")
    with pytest.raises(FacekitError, match="architecture 'frozen-solid' has no trainable parameter"):
        Trainer(config(synthetic_dataset, tmp_path / "run", arch="frozen-solid", input_size=32)).train()
    assert not (tmp_path / "run").exists()


def test_a_loader_this_machine_lacks_fails_before_any_folder_is_made(synthetic_dataset, tmp_path, monkeypatch):
    from facekit.data.loaders import dali

    monkeypatch.setattr(dali, "dali_problem", lambda: "cannot import nvidia.dali: no such library")
    line = one_line_error(invoke("train", "--data", synthetic_dataset, *FAST, "--loader", "dali", "--out", tmp_path / "run"), 2)
    assert line.startswith("Error: --loader dali: DALI does not work here") and "--loader torch" in line
    assert not (tmp_path / "run").exists()


def test_a_batch_size_no_machine_holds_is_refused_before_any_folder(tmp_path, synthetic_dataset):
    result = invoke("train", "--data", synthetic_dataset, "--out", tmp_path / "run", "--batch-size", 10**20)
    assert "--batch-size must be from 1 to 65536" in one_line_error(result, 2)
    assert not (tmp_path / "run").exists()


UNFORESEEN = r"""
from facekit.api import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command()
    def explode():
        "Fail the way nobody planned for."
        raise RuntimeError("the flux capacitor\nsecond line")
"""


def test_an_unforeseen_exception_is_one_line_unless_debugging(facekit_plugin, monkeypatch):
    """Any exception a command raises (facekit's or a plugin's) is one line and exit 1; FACEKIT_DEBUG=1 shows it."""
    import typer

    from facekit.cli import FacekitGroup

    cli = typer.Typer(cls=FacekitGroup)
    cli.command()(lambda: None)
    facekit_plugin(UNFORESEEN, package="facekit-explode").add_commands(cli)
    result = CliRunner().invoke(cli, ["explode"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert one_line_error(result, 1).startswith(
        "Error: unexpected RuntimeError: the flux capacitor (in plugin 'facekit_explode_plugin' from package "
        "facekit-explode) (rerun with FACEKIT_DEBUG=1"
    )  # the plugin at fault is named
    monkeypatch.setenv("FACEKIT_DEBUG", "1")
    result = CliRunner().invoke(cli, ["explode"])
    assert isinstance(result.exception, RuntimeError)  # the real exception, for a bug report
