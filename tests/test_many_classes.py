"""Runs of many classes: evaluation and predictions.npz hold the top-k classes per
test image, N x k, and the N x C probabilities only while they are small."""

import csv
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import facekit.training.loops
from facekit.engine import SilentProgress, Trainer, TrainConfig
from facekit.runs import DENSE_PROBS_LIMIT, TOP_K, Run, RunWriter
from _testutil import invoke

CLASSES, IMAGES, FEATURES = 20_000, 900, 8  # 18M probabilities: past DENSE_PROBS_LIMIT


def fake_scores(tmp_path: Path):
    """A linear 'model' over ``FEATURES`` numbers per image giving CLASSES logits, its test images
    in batches, and the dense softmax of them all."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(FEATURES, CLASSES))
    images = torch.randn(IMAGES, 1, 1, FEATURES) * 4
    labels = torch.randint(0, CLASSES, (IMAGES,))
    batches = list(zip(images.split(64), labels.split(64)))
    with torch.no_grad():
        dense = torch.softmax(model(images), 1)
    return Trainer(TrainConfig(data=tmp_path, device="cpu")), model, batches, labels.numpy(), dense


@pytest.mark.slow
def test_evaluate_many_classes_keeps_the_top_k_of_the_dense_softmax(tmp_path):
    trainer, model, batches, labels, dense = fake_scores(tmp_path)
    assert IMAGES * CLASSES > DENSE_PROBS_LIMIT
    loss, accuracy, scores = trainer.evaluate(model, batches, nn.CrossEntropyLoss())
    top = torch.topk(dense, TOP_K, dim=1)
    assert scores.probs is None
    assert scores.top_ids.shape == (IMAGES, TOP_K) and scores.top_ids.dtype == np.int32
    assert np.array_equal(scores.top_ids, top.indices.numpy())
    assert np.allclose(scores.top_probs, top.values.numpy(), rtol=1e-5, atol=1e-7)
    assert np.array_equal(scores.y_pred, dense.argmax(1).numpy())
    assert accuracy == pytest.approx(float((dense.argmax(1).numpy() == labels).mean()))

    # The same images and classes written and read back in memory proportional to N * k.
    files = [f"id_{c}/{i}.png" for i, c in enumerate(labels)]
    classes = [f"id_{c}" for c in range(CLASSES)]
    (tmp_path / "classes.json").write_text('["' + '","'.join(classes) + '"]')
    tracemalloc.start()
    try:
        RunWriter(tmp_path).write_predictions(np.arange(IMAGES), labels, scores, classes, files)
        saved = Run(tmp_path).predictions()
        y_true, y_pred = Run(tmp_path).test_labels()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB: the N x C probabilities take {IMAGES * CLASSES * 4 / 2**20:.0f}"
    assert set(saved) == {"index", "y_true", "y_pred", "top_ids", "top_probs"}
    assert np.array_equal(saved["top_ids"], scores.top_ids) and np.array_equal(saved["top_probs"], scores.top_probs)
    assert np.array_equal(y_true, labels) and np.array_equal(y_pred, scores.y_pred)
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["confidence"]) for r in rows] == pytest.approx(top.values[:, 0].numpy(), abs=5e-5)
    assert [int(r["pred_id"]) for r in rows] == scores.y_pred.tolist()


def test_evaluate_keeps_the_probabilities_up_to_the_limit(tmp_path):
    trainer, model, batches, _, dense = fake_scores(tmp_path)
    _, _, scores = trainer.evaluate(model, batches[:2], nn.CrossEntropyLoss())  # 128 x 20k: 2.6M floats
    assert np.array_equal(scores.probs, dense[:128].numpy())
    assert np.array_equal(scores.top_ids, torch.topk(dense[:128], TOP_K, dim=1).indices.numpy())


def test_small_run_writes_probs_and_their_top_k(facekit_run):
    saved = Run(facekit_run).predictions()
    probs = torch.from_numpy(saved["probs"])
    assert set(saved) == {"index", "y_true", "y_pred", "top_ids", "top_probs", "probs"}
    assert saved["top_ids"].shape == (len(probs), 4)  # k = min(C, TOP_K): 4 classes
    assert np.array_equal(saved["top_ids"], torch.topk(probs, 4, dim=1).indices.numpy())
    assert np.array_equal(saved["top_probs"], torch.topk(probs, 4, dim=1).values.numpy())
    assert np.array_equal(saved["y_pred"], saved["top_ids"][:, 0])


@pytest.mark.slow
def test_training_past_the_limit_writes_top_k_alone_and_reports(synthetic_dataset, facekit_run, tmp_path, monkeypatch):
    monkeypatch.setattr(facekit.training.loops, "DENSE_PROBS_LIMIT", 8)  # a few images x 4 classes pass it
    # facekit_run's configuration: the same model, so the same predictions.
    config = TrainConfig(
        data=synthetic_dataset, out=tmp_path / "run", arch="baseline", input_size=48, epochs=1, batch_size=8,
        lr=1e-3, rotate=0.0, loader="torch", workers=0, test_size=0.25, val_size=0.25,
    )
    run = Run(Trainer(config, SilentProgress()).train())
    saved, dense = run.predictions(), Run(facekit_run).predictions()
    assert "probs" not in saved
    for key in ("index", "y_true", "y_pred", "top_ids"):
        assert np.array_equal(saved[key], dense[key]), key
    # Past the limit the top probabilities come from the logits (exp(logit - logsumexp)), not from
    # a full softmax row: the same values to float32 rounding.
    np.testing.assert_allclose(saved["top_probs"], dense["top_probs"], rtol=1e-5, atol=1e-7)
    assert (run.path / "predictions.csv").read_bytes() == (facekit_run / "predictions.csv").read_bytes()
    result = invoke("report", run.path, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_report_on_a_fabricated_run_of_many_classes_without_probs(tmp_path):
    from benchmarks.scale import fabricate_run

    fabricate_run(tmp_path / "run", classes=5000, per_class=2)  # 5000 x 5000 probabilities: past the limit
    saved = Run(tmp_path / "run").predictions()
    assert "probs" not in saved and saved["top_ids"].shape == (5000, TOP_K)
    assert np.array_equal(saved["top_ids"][:, 0], saved["y_pred"])
    result = invoke("report", tmp_path / "run", "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output


def top_k_file(keep_probs: bool = False, **changes):
    """Damages predictions.npz: facekit_run's top-k arrays (8 images x 4 classes) with ``changes``
    (None: removed), and without ``probs`` unless ``keep_probs``."""

    def damage(file: Path) -> None:
        with np.load(file) as data:
            arrays = {key: data[key] for key in data.files if keep_probs or key != "probs"} | changes
        np.savez(file, **{key: value for key, value in arrays.items() if value is not None})

    return damage


@pytest.mark.parametrize(
    "damage, problem",
    [(top_k_file(top_ids=None, top_probs=None), "KeyError: 'neither probs nor top_ids and top_probs are stored'"),
     (top_k_file(top_probs=None, keep_probs=True), "KeyError: 'top_ids is stored without top_probs'"),
     (top_k_file(top_ids=np.zeros((8, 3), np.int32)), "arrays of mismatched shapes"),
     (top_k_file(top_probs=np.zeros((7, 4), np.float32)), "arrays of mismatched shapes"),
     (top_k_file(top_ids=np.full((8, 4), 4, np.int32)), "class ids outside 0..3"),
     (top_k_file(top_ids=np.full((8, 4), 0.5)), "class ids outside 0..3"),
     (top_k_file(top_probs=np.full((8, 4), np.nan, np.float32)), "probabilities that are not finite numbers"),
     (top_k_file(top_probs=np.full((8, 4), 1.5, np.float32)), "top_probs outside 0..1"),
     (top_k_file(top_probs=np.tile(np.float32([0.1, 0.2, 0.3, 0.4]), (8, 1))), "top_probs not in descending order")],
)  # fmt: skip
def test_report_on_damaged_top_k_is_one_line(damage, problem, facekit_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(facekit_run, run)
    damage(run / "predictions.npz")
    result = invoke("report", run)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"predictions.npz is damaged ({problem}" in lines[0], result.stderr
    assert f"facekit train --resume {run}" in lines[0]
    Trainer.resume(run)  # writes them again from the kept model
    assert Run(run).predictions()["top_ids"].shape == (8, 4)
