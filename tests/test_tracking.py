"""Experiment trackers (`facekit train --log NAME`): the logger contract as the engine calls it, a
tracker that fails (warned once, training goes on), and the built-in tensorboard and mlflow
trackers, their values read back with TensorBoard's event reader and MLflow's client."""

from __future__ import annotations

import errno
import json
import sys
import warnings
from pathlib import Path

import pytest

from facekit.config import TrainConfig
from facekit.engine import SilentProgress, Trainer, TrainingInterrupted
from facekit.errors import UsageError
from facekit.runs import Run
from facekit.testing import check_logger
from facekit.tracking import TrackerWarning
from _testutil import InterruptAt

EPOCHS = 2

RECORDER = """
from facekit.api import LoggerSpec, hookimpl

CALLS = []  # (logger name, method, argument)


class Recorder:
    def __init__(self, name, context, fail_in=None):
        self.name, self.fail_in = name, fail_in
        CALLS.append((name, "start", context))
        self._maybe_fail("start")

    def _maybe_fail(self, method):
        if method == self.fail_in:
            raise OSError(28, "No space left on device")

    def log_epoch(self, row):
        CALLS.append((self.name, "log_epoch", dict(row)))
        self._maybe_fail("log_epoch")

    def log_results(self, results):
        CALLS.append((self.name, "log_results", results))

    def close(self):
        CALLS.append((self.name, "close", None))


@hookimpl
def register_loggers(register):
    register(LoggerSpec("recorder", lambda context: Recorder("recorder", context), "records every call"))
    register(LoggerSpec("full-disk", lambda context: Recorder("full-disk", context, "log_epoch"), "fails at epoch 1"))
    register(LoggerSpec("no-package", lambda context: Recorder("no-package", context, "start"), "fails to start"))
"""


def train(data: Path, out: Path, *, log: list[str], progress=None, **settings) -> Path:
    config = TrainConfig(
        data=data, out=out, arch="baseline", input_size=40, epochs=EPOCHS, batch_size=8, lr=1e-3, rotate=0.0,
        loader="torch", workers=0, threads=1, test_size=0.25, val_size=0.25, log=log, **settings,
    )  # fmt: skip
    return Trainer(config, progress or SilentProgress()).train()


@pytest.fixture
def recorder(facekit_plugin):
    facekit_plugin(RECORDER, package="facekit-recorder", module="facekit_recorder")
    return sys.modules["facekit_recorder"].CALLS


@pytest.mark.slow
def test_the_engine_gives_a_tracker_every_epoch_the_results_and_closes_it(recorder, synthetic_dataset, tmp_path):
    run_dir = train(synthetic_dataset, tmp_path / "run", log=["recorder"])
    methods = [method for _, method, _ in recorder]
    assert methods == ["start"] + ["log_epoch"] * EPOCHS + ["log_results", "close"]

    context = recorder[0][2]
    assert context.run_dir == run_dir and context.folds == 1 and not context.resumed
    assert context.config["lr"] == 1e-3 and context.config["log"] == ["recorder"]
    # The rows are history.json's, with the learning rate each epoch started with.
    rows = [argument for _, method, argument in recorder if method == "log_epoch"]
    history = Run(run_dir).history
    for row, saved in zip(rows, history):
        for key in ("fold", "epoch", "train_loss", "val_loss", "train_acc", "val_acc", "images_per_s", "lr"):
            assert row[key] == saved[key], key
        assert row["lr"] == 1e-3 and row["images_per_s"] > 0
    # The results: the test figures of the report, and its files, written into the run.
    results = recorder[-2][2]
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert results.metrics["test_balanced_accuracy"] == pytest.approx(report["averages"]["balanced_accuracy"])
    assert {p.name for p in results.files} >= {"report.md", "report.json", "loss_curves.png"}
    assert all(p.is_file() for p in results.files)


@pytest.mark.slow
def test_a_failing_tracker_warns_once_and_training_goes_on(recorder, synthetic_dataset, tmp_path):
    with pytest.warns(TrackerWarning) as caught:
        run_dir = train(synthetic_dataset, tmp_path / "run", log=["full-disk", "no-package", "recorder"])
    messages = [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]
    assert len(messages) == 2, messages  # one for each failing tracker, however many epochs
    assert any(m.startswith("--log full-disk failed (OSError: [Errno 28] No space left on device)") for m in messages)
    assert any(m.startswith("--log no-package could not start") for m in messages)
    assert all("training goes on without it" in m for m in messages)
    assert Run(run_dir).has_predictions  # the training finished
    calls = [(name, method) for name, method, _ in recorder]
    assert calls.count(("full-disk", "log_epoch")) == 1  # dropped after its failure...
    assert ("full-disk", "close") in calls  # ...and let go of what it holds
    assert calls.count(("recorder", "log_epoch")) == EPOCHS and ("recorder", "log_results") in calls


def test_an_unknown_tracker_is_refused_before_anything_is_written(recorder, synthetic_dataset, tmp_path):
    with pytest.raises(UsageError, match="--log 'recordr' is not known.*Did you mean 'recorder'"):
        train(synthetic_dataset, tmp_path / "run", log=["recordr"])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_command_takes_log_repeated(recorder, synthetic_dataset, tmp_path):
    from typer.testing import CliRunner

    from facekit.cli import app

    result = CliRunner().invoke(app, [
        "train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), "--input-size", "40", "--epochs", "1",
        "--loader", "torch", "--workers", "0", "--threads", "1", "--rotate", "0", "-q",
        "--log", "recorder", "--log", "recorder",  # the same tracker twice tracks once
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [m for _, m, _ in recorder] == ["start", "log_epoch", "log_results", "close"]
    assert Run(tmp_path / "run").config["log"] == ["recorder", "recorder"]


def test_nproc_hands_log_to_facekit_not_to_torchrun(monkeypatch):
    import torch.distributed.run

    from facekit.distributed import launch

    seen = []
    monkeypatch.setattr(torch.distributed.run, "run", seen.append)
    launch(2, ["train", "--data", "faces", "--log", "tensorboard", "--log=mlflow"])
    assert seen[0].training_script_args == ["train", "--data", "faces", "--log", "tensorboard", "--log=mlflow"]
    assert seen[0].nproc_per_node == "2"


# The built-in trackers ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tensorboard_event_files_hold_every_epoch_and_the_report(synthetic_dataset, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (scripts/install.sh installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackerWarning)  # the tracker must not have failed
        run_dir = train(synthetic_dataset, tmp_path / "run", log=["tensorboard"], split="kfold", folds=2)
    history = Run(run_dir).history
    for fold in (0, 1):
        events = EventAccumulator(str(run_dir / "tensorboard" / f"fold-{fold}"), size_guidance={"scalars": 0})
        events.Reload()
        rows = [row for row in history if row["fold"] == fold]
        for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"), ("accuracy/train", "train_acc"),
                         ("accuracy/val", "val_acc"), ("learning_rate", "lr"), ("speed/images_per_s", "images_per_s")):  # fmt: skip
            scalars = events.Scalars(tag)
            assert [s.step for s in scalars] == [row["epoch"] for row in rows], tag
            assert [s.value for s in scalars] == pytest.approx([row[key] for row in rows], rel=1e-6), tag
    report = EventAccumulator(str(run_dir / "tensorboard" / "report"), size_guidance={"images": 0, "scalars": 0})
    report.Reload()
    figures = set(report.Tags()["images"])
    assert {"report/loss_curves", "report/confusion_matrix", "report/score_vs_training_images"} <= figures
    balanced = json.loads((run_dir / "report" / "report.json").read_text())["averages"]["balanced_accuracy"]
    assert report.Scalars("test/balanced_accuracy")[0].value == pytest.approx(balanced, rel=1e-6)


def test_tensorboard_tracks_on_the_contract_check(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (scripts/install.sh installs it)")
    check_logger("tensorboard", tmp_path / "run")


@pytest.mark.slow
def test_mlflow_records_params_every_epoch_and_the_report_in_a_local_database(synthetic_dataset, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is not installed (scripts/install.sh installs mlflow-skinny)")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackerWarning)
        run_dir = train(synthetic_dataset, tmp_path / "run", log=["mlflow"])
    assert (tmp_path / "mlflow.db").is_file()  # the working folder's, MLflow's own default
    record = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["lr"] == "0.001" and run.data.params["arch"] == "baseline"
    history = Run(run_dir).history
    for key in ("train_loss", "val_loss", "train_acc", "val_acc", "lr", "images_per_s"):
        logged = client.get_metric_history(record["run_id"], key)
        assert [m.step for m in logged] == [row["epoch"] for row in history], key
        assert [m.value for m in logged] == pytest.approx([row[key] for row in history]), key
    balanced = json.loads((run_dir / "report" / "report.json").read_text())["averages"]["balanced_accuracy"]
    assert run.data.metrics["test_balanced_accuracy"] == pytest.approx(balanced)
    artifacts = {a.path for a in client.list_artifacts(record["run_id"], "report")}
    assert {"report/report.md", "report/report.json", "report/loss_curves.png"} <= artifacts
    check_logger("mlflow", tmp_path / "checked")  # the contract check, on the same database

    # Interrupted, the MLflow run says so; resumed, the same MLflow run goes on to the end.
    with pytest.raises(TrainingInterrupted):
        train(synthetic_dataset, tmp_path / "again", log=["mlflow"], progress=InterruptAt(epoch=2))
    again = json.loads((tmp_path / "again" / "mlflow.json").read_text())["run_id"]
    assert client.get_run(again).info.status == "KILLED"
    Trainer.resume(tmp_path / "again", SilentProgress())  # tracks with the run's own --log
    assert json.loads((tmp_path / "again" / "mlflow.json").read_text())["run_id"] == again
    assert client.get_run(again).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(again, "train_loss")] == list(range(1, EPOCHS + 1))


def test_an_unreachable_mlflow_server_is_one_warning_and_training_goes_on(synthetic_dataset, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is not installed (scripts/install.sh installs mlflow-skinny)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.warns(TrackerWarning, match="--log mlflow could not start") as caught:
        run_dir = train(synthetic_dataset, tmp_path / "run", log=["mlflow"])
    assert len([w for w in caught if issubclass(w.category, TrackerWarning)]) == 1
    assert Run(run_dir).has_predictions


def test_the_warning_names_the_cause_in_one_line():
    from facekit.tracking import Tracking
    from facekit.specs import LoggerContext, LoggerSpec

    def broken(context):
        raise ConnectionError("server said:\n" + "x" * 1000)

    with pytest.warns(TrackerWarning) as caught:
        tracking = Tracking.start([LoggerSpec("remote", broken)], LoggerContext(Path("."), {}))
    message = str(caught[0].message)
    assert "\n" not in message and len(message) < 500 and not tracking


def test_a_full_disk_error_from_a_tracker_is_an_oserror_warning_not_a_crash():
    from facekit.tracking import Tracking

    class Full:
        def log_epoch(self, row):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    tracking = Tracking([("tensorboard", Full())])
    with pytest.warns(TrackerWarning, match="No space left on device"):
        tracking.log_epoch({"fold": 0, "epoch": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracking.log_epoch({"fold": 0, "epoch": 2})  # dropped: no second warning
