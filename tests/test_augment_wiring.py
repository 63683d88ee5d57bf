"""Augmentation pipelines, label smoothing and LR schedules wired into the engine, the runs and the CLI."""

from pathlib import Path

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facekit.cli import app
from facekit.data.augment import augment_args
from facekit.engine import SilentProgress, Trainer, TrainConfig
from facekit.errors import UsageError
from facekit.runs import Run, load_checkpoint


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=data, out=out, arch="baseline", input_size=64, epochs=2, batch_size=8, lr=1e-3,
        loader="torch", workers=0, test_size=0.25, val_size=0.25, seed=3,
    )  # fmt: skip
    return TrainConfig(**(settings | overrides))


# ------------------------------------------------------------------ which steps a run uses
def test_augment_args_default_shorthand_and_refusal():
    assert augment_args(None, None) == ["rotate:15"]
    assert augment_args(None, 15.0) == ["rotate:15"]
    assert augment_args(None, 0) == ["rotate:0"]
    assert float(augment_args(None, 12.3456789)[0].split(":")[1]) == 12.3456789  # exact, so the angles are
    assert augment_args(["flip", "crop:0.8"], None) == ["flip", "crop:0.8"]
    with pytest.raises(UsageError, match=r"^--rotate 10 and --augment: give one; --rotate DEG is short for --augment rotate:DEG$"):
        augment_args(["flip"], 10.0)


def test_a_run_saved_before_augment_existed_resumes_with_its_rotation(tmp_path):
    old = TrainConfig.from_dict({"data": str(tmp_path), "rotate": 7.5, "arch": "baseline"})
    trainer = Trainer(old)
    assert trainer.config.augment == ["rotate:7.5"] and trainer.config.rotate is None
    assert trainer.config.label_smoothing == 0.0 and trainer.config.schedule == "constant"
    assert [(step.spec.name, step.params) for step in trainer.augment.steps] == [("rotate", 7.5)]


def test_the_config_records_steps_in_running_order(tmp_path):
    trainer = Trainer(config(tmp_path, tmp_path / "run", augment=["color:0.2", "rotate:10", "flip"]))
    assert trainer.config.augment == ["rotate:10", "flip", "color:0.2"]  # geometric steps first


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(augment=["bogus:1"]), r"^--augment 'bogus' is not known; choose one of: .*rotate"),
        (dict(augment=["rotate:-3"]), r"^--augment rotate:-3: "),
        (dict(schedule="cosin"), r"^--schedule 'cosin' is not known; choose one of: constant, cosine, onecycle\. Did you mean 'cosine'\?$"),
        (dict(label_smoothing=1.0), r"^--label-smoothing 1\.0: expected a number from 0 up to \(not including\) 1$"),
        (dict(rotate=200.0), r"^--rotate must be between 0 and 180 degrees"),
    ],
)
def test_bad_options_fail_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        Trainer(config(tmp_path, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_label_smoothing_on_a_loss_without_support_fails_first(facekit_plugin, tmp_path):
    facekit_plugin(
        "from facekit import hookimpl\nfrom facekit.api import LossSpec\n"
        "@hookimpl\ndef register_losses(register):\n"
        "    register(LossSpec('sharp', lambda counts: None, 'No smoothing.'))\n",
        package="facekit-sharp",
    )
    with pytest.raises(UsageError, match=r"^--loss sharp does not support --label-smoothing"):
        Trainer(config(tmp_path, tmp_path / "run", loss="sharp", label_smoothing=0.1))


# ------------------------------------------------------------------ runs: config and resume
class InterruptAt(SilentProgress):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def epoch_start(self, fold, epoch, epochs, batches):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _last_lrs(run_dir: Path) -> list[float]:
    return [g["lr"] for g in load_checkpoint(run_dir / "checkpoints" / "fold-0-last.pt")["optimizer"]["param_groups"]]


def test_config_records_the_options_and_a_resumed_cosine_run_matches_an_uninterrupted_one(synthetic_dataset, tmp_path):
    options = dict(epochs=3, augment=["rotate:10"], label_smoothing=0.1, schedule="cosine")
    straight = Run(Trainer(config(synthetic_dataset, tmp_path / "straight", **options)).train())
    assert {k: straight.config[k] for k in ("augment", "rotate", "label_smoothing", "schedule")} == {
        "augment": ["rotate:10"], "rotate": None, "label_smoothing": 0.1, "schedule": "cosine",
    }  # fmt: skip
    last = load_checkpoint(tmp_path / "straight" / "checkpoints" / "fold-0-last.pt")
    steps = last["schedule"]["total_steps"]
    assert last["schedule"]["name"] == "cosine" and steps == 3 * math.ceil(len(straight.split["folds"][0]["train"]) / 8)
    # After the last planned batch the rate is the cosine's last step: lr (1 + cos(pi (T-1)/T)) / 2.
    assert _last_lrs(tmp_path / "straight") == [pytest.approx(1e-3 * (1 + np.cos(np.pi * (steps - 1) / steps)) / 2)]

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "broken", **options), InterruptAt(3)).train()
    middle = load_checkpoint(tmp_path / "broken" / "checkpoints" / "fold-0-last.pt")
    assert middle["schedule"]["scheduler"]["last_epoch"] == 2 * steps // 3  # two epochs of batches
    resumed = Run(Trainer.resume(tmp_path / "broken"))
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert _last_lrs(tmp_path / "broken") == _last_lrs(tmp_path / "straight")
    assert np.array_equal(straight.predictions()["y_pred"], resumed.predictions()["y_pred"])


def test_resuming_with_another_schedule_is_refused(synthetic_dataset, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "run", epochs=2, schedule="onecycle", rotate=0.0), InterruptAt(2)).train()
    with pytest.raises(UsageError, match=r"^--schedule cosine: the run was started with --schedule onecycle; resume with that$"):
        Trainer.resume(tmp_path / "run", schedule="cosine")


def test_label_smoothing_reaches_the_training_loss_only(synthetic_dataset, tmp_path, monkeypatch):
    import torch.nn.functional as F

    used = {}
    real_train_epoch, real_evaluate = Trainer.train_epoch, Trainer.evaluate

    def spy_train(self, model, loader, loss_fn, *rest):
        used["train"] = loss_fn
        return real_train_epoch(self, model, loader, loss_fn, *rest)

    def spy_evaluate(self, model, loader, loss_fn):
        used["val"] = loss_fn
        return real_evaluate(self, model, loader, loss_fn)

    monkeypatch.setattr(Trainer, "train_epoch", spy_train)
    monkeypatch.setattr(Trainer, "evaluate", spy_evaluate)
    Trainer(config(synthetic_dataset, tmp_path / "run", epochs=1, rotate=0.0, label_smoothing=0.2)).train()
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert float(used["train"](logits, targets)) == pytest.approx(float(F.cross_entropy(logits, targets, label_smoothing=0.2)))
    assert float(used["val"](logits, targets)) == pytest.approx(float(F.cross_entropy(logits, targets)))
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "fold-0-last.pt")
    assert first["schedule"]["name"] == "constant" and first["schedule"]["scheduler"] is None


# ------------------------------------------------------------------ the CLI
runner = CliRunner()
FAST = ["--input-size", "48", "--epochs", "1", "--batch-size", "8", "--loader", "torch", "--workers", "0", "--threads", "1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--augment", "bogus:1"], "--augment 'bogus' is not known; choose one of:"),
        (["--rotate", "10", "--augment", "flip"], "--rotate 10 and --augment: give one"),
        (["--schedule", "linear"], "--schedule 'linear' is not known; choose one of: constant, cosine, onecycle"),
        (["--label-smoothing", "-0.1"], "--label-smoothing -0.1: expected a number from 0"),
    ],
)
def test_cli_refuses_bad_augment_schedule_and_smoothing_in_one_line(synthetic_dataset, tmp_path, args, message):
    result = runner.invoke(app, ["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), *FAST, *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_cli_records_the_options(synthetic_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(synthetic_dataset), "--out", str(out), "--json", *FAST]
    result = runner.invoke(app, [*args, "--rotate", "5", "--label-smoothing", "0.05", "--schedule", "onecycle"])
    assert result.exit_code == 0, result.output
    config = Run(out).config
    assert (config["augment"], config["label_smoothing"], config["schedule"]) == (["rotate:5"], 0.05, "onecycle")
