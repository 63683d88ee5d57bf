"""facekit's own experiment trackers, ``--log tensorboard`` and ``--log mlflow``, registered like any plugin.

Each imports its package only when a training asks for it (``start``): facekit runs without
them, and a machine that lacks one gets one warning and a training without that tracker.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from facekit import hookimpl
from facekit.api import LoggerContext, LoggerSpec, RunResults
from facekit.tracking import epoch_metrics, flat_params

TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/fold-K (epochs) and RUN/tensorboard/report (results)
# Scalar tags: TensorBoard groups a tag's charts by the part before "/".
TENSORBOARD_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
    "lr": "learning_rate", "images_per_s": "speed/images_per_s", "seconds": "speed/epoch_seconds",
}  # fmt: skip

MLFLOW_RUN_FILE = "mlflow.json"  # RUN/mlflow.json: the tracking URI and run id, so --resume continues that run
MLFLOW_EXPERIMENT = "facekit"  # unless MLFLOW_EXPERIMENT_NAME names another
# A tracking server that is down should cost a training seconds, not MLflow's default minutes of retries.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


class TensorBoardLogger:
    """Event files under ``RUN/tensorboard/``: one folder per fold, one for the results."""

    def __init__(self, context: LoggerContext):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(f"the tensorboard package is not installed ({exc}); pip install tensorboard") from exc
        self.summary_writer = SummaryWriter
        self.root = Path(context.run_dir) / TENSORBOARD_DIR
        self.writers: dict[str, Any] = {}
        self._writer("fold-0")  # fails now, not at the first epoch, where the folder cannot be written

    def _writer(self, name: str) -> Any:
        if name not in self.writers:
            self.writers[name] = self.summary_writer(log_dir=str(self.root / name))
        return self.writers[name]

    def log_epoch(self, row: dict[str, Any]) -> None:
        writer = self._writer(f"fold-{int(row['fold'])}")
        for name, value in epoch_metrics(row).items():
            writer.add_scalar(TENSORBOARD_TAGS[name], value, global_step=int(row["epoch"]))
        writer.flush()  # a full disk shows now (the writer's thread raises here), and TensorBoard sees the epoch

    def log_results(self, results: RunResults) -> None:
        import numpy as np
        from PIL import Image

        writer = self._writer("report")
        for name, value in results.metrics.items():
            writer.add_scalar(f"test/{name.removeprefix('test_')}", value, global_step=0)
        for file in results.files:
            if file.suffix == ".png":
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert("RGB"))
                writer.add_image(f"report/{file.stem}", pixels, global_step=0, dataformats="HWC")
            elif file.suffix == ".md":
                writer.add_text("report", file.read_text(), global_step=0)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class MLflowLogger:
    """An MLflow run: the settings as params, every epoch's figures as metrics, the report as artifacts.

    Where to: ``MLFLOW_TRACKING_URI`` when set (a server, a database, a folder), otherwise the
    SQLite database ``mlflow.db`` in the working folder, MLflow's own default, which ``mlflow ui``
    started there opens.
    """

    def __init__(self, context: LoggerContext):
        for name, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ImportError(f"the mlflow package is not installed ({exc}); pip install mlflow-skinny") from exc
        for quiet in ("mlflow.store.db.utils", "alembic"):  # a new database announces its tables at INFO
            logging.getLogger(quiet).setLevel(logging.WARNING)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_dir = Path(context.run_dir)
        self.prefix = "fold{fold}/" if context.folds > 1 else ""
        self.finished = False
        self.run_id = self._resumed_run() if context.resumed else None
        if self.run_id is None:
            self.run_id = self._new_run(context)

    def _new_run(self, context: LoggerContext) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or MLFLOW_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(
            experiment_id, run_name=self.run_dir.name, tags={"facekit.run_dir": str(self.run_dir.resolve())}
        )
        from mlflow.entities import Param

        params = [Param(key, value[:6000]) for key, value in flat_params(context.config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(run.info.run_id, params=params[start : start + 100])
        record = {"tracking_uri": self.uri, "run_id": run.info.run_id, "experiment_id": experiment_id}
        (self.run_dir / MLFLOW_RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        return run.info.run_id

    def _resumed_run(self) -> str | None:
        """The MLflow run an interrupted training logged to, when it is in this tracking store."""
        try:
            record = json.loads((self.run_dir / MLFLOW_RUN_FILE).read_text())
        except (OSError, ValueError):
            return None
        if record.get("tracking_uri") != self.uri:
            return None
        run_id = str(record.get("run_id"))
        self.client.get_run(run_id)  # gone from the store: an error, and a warning
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def log_epoch(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        prefix = self.prefix.format(fold=int(row["fold"]))
        stamp = int(time.time() * 1000)
        metrics = [Metric(prefix + name, value, stamp, int(row["epoch"])) for name, value in epoch_metrics(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_results(self, results: RunResults) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, 0) for k, v in results.metrics.items()])
        for file in results.files:
            self.client.log_artifact(self.run_id, str(file), artifact_path="report")
        self.finished = True

    def close(self) -> None:
        # KILLED: stopped before its test results (interrupted, diverged or failed); --resume continues it.
        self.client.set_terminated(self.run_id, status="FINISHED" if self.finished else "KILLED")


@hookimpl
def register_loggers(register):
    register(LoggerSpec(
        "tensorboard", TensorBoardLogger,
        "TensorBoard event files in RUN/tensorboard: losses, accuracies, learning rate, images/s, the report's figures.",
    ))
    register(LoggerSpec(
        "mlflow", MLflowLogger,
        "An MLflow run: settings, every epoch's figures, the report and plots (MLFLOW_TRACKING_URI, else ./mlflow.db).",
    ))
