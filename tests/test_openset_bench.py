"""benchmarks/openset.py: its scores against direct computation, and a smoke run of --quick."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import openset as bench
from facekit import openset


def test_nearest_image_scores_are_minus_the_euclidean_distance_and_stand_ins_skip_their_own_person():
    rng = np.random.default_rng(0)
    gallery, gallery_labels = rng.normal(size=(12, 5)), np.repeat(np.arange(4), 3)
    probes = {name: rng.normal(size=(n, 5)) for name, n in (("val", 6), ("test", 7), ("strangers", 9))}
    labels = {"val": np.array([0, 1, 2, 3, 0, 1]), "test": np.array([0, 1, 2, 3, 0, 1, 2])}
    scores = bench.similarity_scores(gallery, gallery_labels, probes, labels, "euclidean")
    distances = np.linalg.norm(probes["test"][:, None] - gallery[None], axis=2)
    assert np.allclose(scores.test, -distances.min(1))
    assert np.array_equal(scores.test_correct, gallery_labels[distances.argmin(1)] == labels["test"])
    val = np.linalg.norm(probes["val"][:, None] - gallery[None], axis=2)
    others = np.where(gallery_labels[None] == labels["val"][:, None], np.inf, val)
    assert np.allclose(scores.val_unknown, -others.min(1))
    assert np.allclose(scores.strangers, -np.linalg.norm(probes["strangers"][:, None] - gallery[None], axis=2).min(1))


def test_softmax_stand_in_strangers_are_scored_as_if_their_class_did_not_exist():
    rng = np.random.default_rng(1)
    logits = {name: rng.normal(size=(n, 4)) * 3 for name, n in (("val", 5), ("test", 6), ("strangers", 7))}
    labels = {"val": np.array([0, 1, 2, 3, 0]), "test": np.array([0, 1, 2, 3, 0, 1])}
    scores = bench.softmax_scores(logits, labels)
    for i, c in enumerate(labels["val"]):
        without = np.delete(logits["val"][i], c)
        assert scores.val_unknown[i] == pytest.approx(openset.softmax(without[None])[0].max())
    assert np.allclose(scores.test, openset.softmax(logits["test"]).max(1))
    margin = bench.softmax_scores(logits, labels, scale=2.0)
    assert np.allclose(margin.strangers, logits["strangers"].max(1) / 2.0)


def test_judge_calibrates_on_validation_and_reports_the_strangers_rate():
    scores = bench.Scores(
        val_known=np.linspace(0.5, 1.0, 50), val_correct=np.ones(50, bool), val_unknown=np.linspace(0.0, 0.6, 200),
        test=np.array([0.9, 0.8, 0.4, 0.95]), test_correct=np.array([True, True, True, False]),
        strangers=np.array([0.1, 0.2, 0.7, 0.3]),
    )  # fmt: skip
    row = bench.judge(scores, 0.01)
    calibration = openset.calibrate_threshold(scores.val_known, scores.val_unknown, 0.01)
    assert row["threshold"] == calibration.threshold
    # Accepted: 0.9, 0.8 (right), 0.95 (wrong): FNIR 2/4; strangers: 0.7 accepted.
    assert row["fnir"] == 0.5 and row["fpir_strangers"] == 0.25 and row["rank1"] == 0.75
    fixed = bench.judge(scores, 0.01, threshold=0.25)
    assert fixed["threshold"] == 0.25 and fixed["fpir_strangers"] == 0.5 and fixed["val_fnir"] is None


@pytest.mark.slow
def test_quick_benchmark_runs_every_row_and_draws_the_det_plot(tmp_path):
    out, plot = tmp_path / "openset.json", tmp_path / "det.png"
    bench.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out), "--plot", str(plot), "--jobs", "1"])
    result = json.loads(out.read_text())
    names = [row["recipe"] for row in result["rows"]]
    assert len(names) == 6 and names[0].startswith("face_recognition") and names[-1] == "baseline, arcface"
    assert result["rows"][3]["kind"] == "facekit head on frozen embeddings"
    for row in result["rows"]:
        assert 0 <= row["rank1"] <= 1 and 0 <= row["fnir"] <= 1 and 0 <= row["fpir_strangers"] <= 1
    arcface = result["rows"][-1]
    assert set(arcface["all_scores"]) == {"softmax", "centroid", "margin"}
    assert result["protocol"]["target_fpir"] == 0.01 and plot.stat().st_size > 0
