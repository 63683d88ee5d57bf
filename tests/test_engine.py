"""The training engine on synthetic faces, CPU: learning, k-fold, resume, the run folder."""

from pathlib import Path

import numpy as np
import pytest
import torch

from facekit.engine import Trainer, resolve_device
from facekit.errors import UsageError
from facekit.runs import Run, load_checkpoint
from _testutil import InterruptAt, config

RUN_FILES = ["config.json", "classes.json", "split.json", "normalization.json", "history.json", "folds.json",
             "predictions.npz", "predictions.csv", "checkpoints/best.pt"]  # fmt: skip


@pytest.mark.slow
def test_training_lowers_the_loss_and_leaves_a_complete_run(synthetic_dataset, tmp_path):
    run_dir = Trainer(config(synthetic_dataset, tmp_path / "run", epochs=4)).train()
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    run = Run(run_dir)
    history = run.history
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(row["images_per_s"] > 0 for row in history)
    predictions = run.predictions()
    assert np.array_equal(predictions["index"], run.split["test"])
    assert predictions["probs"].shape == (len(run.split["test"]), len(run.classes))
    assert np.allclose(predictions["probs"].sum(1), 1, atol=1e-4)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert {"model", "optimizer", "epoch", "rng", "config", "classes"} <= set(checkpoint)
    assert checkpoint["classes"] == run.classes == sorted(p.name for p in synthetic_dataset.iterdir())
    # "auto" is kept as asked, so a resume elsewhere re-resolves it; device_used is this machine's choice.
    assert run.config["device"] == "auto" and run.config["device_used"] == str(resolve_device("auto"))
    norm = run.normalization
    assert norm["source"] == "training split" and len(norm["folds"]) == 1
    assert run.load_model()(torch.zeros(1, 3, 64, 64)).shape == (1, len(run.classes))


@pytest.mark.slow
def test_kfold_trains_k_models_and_keeps_the_best(synthetic_dataset, tmp_path):
    run_dir = Trainer(config(synthetic_dataset, tmp_path / "run", split="kfold", folds=3, epochs=1)).train()
    run = Run(run_dir)
    folds = run.folds
    assert [f["fold"] for f in folds["folds"]] == [0, 1, 2]
    losses = [f["val_loss"] for f in folds["folds"]]
    assert folds["kept"] == int(np.argmin(losses))
    assert folds["val_loss_mean"] == pytest.approx(np.mean(losses))
    assert {row["fold"] for row in run.history} == {0, 1, 2}
    kept = load_checkpoint(run_dir / "checkpoints" / f"fold-{folds['kept']}-best.pt")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert all(torch.equal(kept["model"][k], best["model"][k]) for k in best["model"])
    assert len(run.normalization["folds"]) == 3




@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch_with_the_same_history(synthetic_dataset, tmp_path):
    straight = Run(Trainer(config(synthetic_dataset, tmp_path / "straight", epochs=3)).train())
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(synthetic_dataset, tmp_path / "broken", epochs=3), InterruptAt(3)).train()
    assert [row["epoch"] for row in Run(tmp_path / "broken").history] == [1, 2]
    resumed = Run(Trainer.resume(tmp_path / "broken"))
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert np.array_equal(straight.predictions()["y_pred"], resumed.predictions()["y_pred"])


def test_existing_run_is_never_overwritten_without_force(synthetic_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(UsageError, match="run already exists and is not a facekit run folder .*choose another --out"):
        Trainer(config(synthetic_dataset, out)).train()
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_early_stopping_stops_after_patience_epochs_without_improvement(synthetic_dataset, tmp_path, monkeypatch):
    real_evaluate = Trainer.evaluate

    def flat_validation(self, model, loader, loss_fn):
        loss, accuracy, probs = real_evaluate(self, model, loader, loss_fn)
        return 1.0, accuracy, probs  # validation loss never improves after epoch 1

    monkeypatch.setattr(Trainer, "evaluate", flat_validation)
    run = Run(Trainer(config(synthetic_dataset, tmp_path / "run", epochs=8, patience=2)).train())
    assert [row["epoch"] for row in run.history] == [1, 2, 3]
    assert run.folds["folds"][0]["best_epoch"] == 1


LFW_TINY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw_tiny20"


@pytest.mark.skipif(not LFW_TINY.is_dir(), reason=f"real faces not found at {LFW_TINY}")
def test_tronnet_weighted_on_real_faces_leaves_a_complete_run(tmp_path):
    """The README's TronNet command on lfw_tiny20, shrunk for CI (64 px, 1 epoch)."""
    run_dir = Trainer(config(LFW_TINY, tmp_path / "run", arch="tronnet", loss="weighted", epochs=1, batch_size=32)).train()
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    run = Run(run_dir)
    assert len(run.classes) == 20 and len(run.split["files"]) == 271
    assert run.config["loss"] == "weighted" and run.config["arch"] == "tronnet"


def test_run_files_are_readable_by_others(tmp_path):
    from facekit.files import atomic_write

    atomic_write(tmp_path / "x.json", b"{}")
    assert (tmp_path / "x.json").stat().st_mode & 0o044 == 0o044


@pytest.mark.slow
def test_training_proceeds_on_the_good_files_of_a_broken_data_set(synthetic_dataset, tmp_path):
    import shutil

    from PIL import Image

    data = tmp_path / "faces"
    shutil.copytree(synthetic_dataset, data)
    first = sorted((data / "person_00").iterdir())[0]
    Image.open(first).convert("RGB").save(data / "person_00" / "photo.jpg")
    full = (data / "person_00" / "photo.jpg").read_bytes()
    (data / "person_00" / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (data / "person_01" / "empty.jpg").write_bytes(b"")
    (data / "person_01" / "notes.jpg").write_text("not an image")
    (data / "nobody").mkdir()
    run = Run(Trainer(config(data, tmp_path / "run", epochs=1, loader="auto")).train())
    assert "nobody" not in run.classes and len(run.classes) == 4
    files = set(run.split["files"])
    assert "person_00/photo.jpg" in files
    assert not files & {"person_00/truncated.jpg", "person_01/empty.jpg", "person_01/notes.jpg"}
    assert run.has_predictions


def test_a_cuda_index_this_machine_lacks_is_a_usage_error(synthetic_dataset, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from facekit.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UsageError, match=r"^--device cuda:7: this machine has 1 CUDA device\(s\); use cuda:0 to cuda:0, or auto$"):
        resolve_device("cuda:7")
    result = CliRunner().invoke(app, ["train", "--data", str(synthetic_dataset), "--device", "cuda:7", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "cuda:7" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists(), "nothing is written for a bad option"


TWO_SPEED = """
from facekit import hookimpl
from facekit.api import ArchitectureSpec

def build(options):
    from torch import nn
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, options.num_classes))

def backbone_slower(model, lr):
    return [{"params": list(model[0].parameters()), "lr": lr / 10}, {"params": list(model[3].parameters())}]

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("two-speed", build, "Backbone at a tenth of the lr.", input_size=32, param_groups=backbone_slower))
"""


@pytest.mark.slow
def test_architecture_param_groups_set_the_optimizer_groups(facekit_plugin, synthetic_dataset, tmp_path):
    facekit_plugin(TWO_SPEED, package="facekit-two-speed")
    run_dir = Trainer(config(synthetic_dataset, tmp_path / "run", arch="two-speed", epochs=1, lr=1e-3)).train()
    groups = load_checkpoint(run_dir / "checkpoints" / "fold-0-last.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [pytest.approx(1e-4), pytest.approx(1e-3)]
    assert [len(g["params"]) for g in groups] == [2, 2]  # conv weight+bias, then linear weight+bias
    assert all(g["weight_decay"] == 5e-3 for g in groups)


@pytest.mark.slow
def test_without_param_groups_every_trainable_parameter_is_one_group():
    from facekit.engine import build_optimizer
    from facekit.factory import create_model
    from facekit.plugins import architectures

    model = create_model("resnet18", num_classes=3, pretrained=False)  # frozen backbone, trainable head
    optimizer = build_optimizer(model, architectures().get("resnet18"), lr=1e-3, weight_decay=0.0)
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["params"] == [model.fc.weight, model.fc.bias]
