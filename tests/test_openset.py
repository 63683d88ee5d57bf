"""Open-set metrics and decisions (facekit.openset) against scikit-learn and by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import det_curve as sk_det_curve
from sklearn.metrics import roc_curve

from facekit import openset
from facekit.errors import UsageError


def probes(seed: int, known: int = 300, unknown: int = 500, ties: bool = False):
    """Known probes score higher on average than unknown ones; some knowns have a wrong top-1."""
    rng = np.random.default_rng(seed)
    known_scores = rng.normal(1.0, 0.6, known)
    unknown_scores = rng.normal(0.0, 0.6, unknown)
    if ties:  # coarse scores: many equal values across both sides
        known_scores, unknown_scores = np.round(known_scores, 1), np.round(unknown_scores, 1)
    correct = rng.random(known) < 0.85
    return known_scores, correct, unknown_scores


def sklearn_points(known_scores, correct, unknown_scores):
    """scikit-learn's ROC with the knowns as positives; a wrong top-1 is never found, whatever its score."""
    floor = min(known_scores.min(), unknown_scores.min()) - 1.0
    y = np.r_[np.ones(known_scores.size), np.zeros(unknown_scores.size)]
    s = np.r_[np.where(correct, known_scores, floor), unknown_scores]
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thresholds


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target", [0.1, 0.01, 0.002, 0.0])
def test_fnir_at_fpir_equals_scikit_learn(seed, ties, target):
    known, correct, unknown = probes(seed, ties=ties)
    fpr, tpr, _ = sklearn_points(known, correct, unknown)
    expected = 1.0 - tpr[fpr <= target + 1e-12].max()
    assert openset.fnir_at_fpir(known, correct, unknown, target) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("far", [1e-2, 1e-3, 0.05])
def test_tar_at_far_equals_scikit_learn(seed, far):
    rng = np.random.default_rng(seed)
    genuine, impostor = rng.normal(0.6, 0.2, 400), rng.normal(0.1, 0.2, 3000)
    y = np.r_[np.ones(genuine.size), np.zeros(impostor.size)]
    fpr, tpr, _ = roc_curve(y, np.r_[genuine, impostor], drop_intermediate=False)
    assert openset.tar_at_far(genuine, impostor, far) == pytest.approx(tpr[fpr <= far + 1e-12].max(), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_det_curve_equals_scikit_learn(seed, ties):
    known, _, unknown = probes(seed, known=200, unknown=250, ties=ties)
    curve = openset.det_curve(known, unknown)
    y = np.r_[np.ones(known.size), np.zeros(unknown.size)]
    sk_fpr, sk_fnr, sk_thresholds = sk_det_curve(y, np.r_[known, unknown])
    # scikit-learn keeps only the points where the curve changes; every one of them is ours.
    position = np.searchsorted(curve.thresholds, sk_thresholds)
    np.testing.assert_array_equal(curve.thresholds[position], sk_thresholds)
    np.testing.assert_allclose(curve.fpir[position], sk_fpr, atol=1e-12)
    np.testing.assert_allclose(curve.fnir[position], sk_fnr, atol=1e-12)


def test_det_curve_counts_a_wrong_top1_as_a_miss_at_every_threshold():
    known, correct, unknown = probes(1)
    curve = openset.det_curve(known, unknown, correct)
    fpr, tpr, thresholds = sklearn_points(known, correct, unknown)
    for t, f, p in zip(thresholds[1:-1], fpr[1:-1], tpr[1:-1]):  # skip sklearn's inf and its floor point
        i = np.searchsorted(curve.thresholds, t)
        assert curve.fpir[i] == pytest.approx(f) and curve.fnir[i] == pytest.approx(1 - p)
    assert curve.fnir.min() == pytest.approx(1 - correct.mean())  # accepting all leaves the rank-1 errors


def test_fnir_definition_by_hand():
    known = np.array([0.9, 0.8, 0.7, 0.2])
    correct = np.array([True, False, True, True])
    unknown = np.array([0.75, 0.1, 0.05, 0.3])
    # Accepting >= 0.7 names 1 of 4 strangers; of the knowns only 0.9 and 0.7 are right and accepted.
    assert openset.rates_at(0.7, known, unknown, correct) == (0.25, 0.5)
    assert openset.fnir_at_fpir(known, correct, unknown, 0.25) == 0.5
    # No stranger named: the threshold goes above 0.75; only 0.9 is found.
    assert openset.fnir_at_fpir(known, correct, unknown, 0.0) == 0.75
    # Naming every stranger is allowed: what remains is the rank-1 error.
    assert openset.fnir_at_fpir(known, correct, unknown, 1.0) == 0.25


def test_calibration_reaches_the_target_on_its_own_data():
    known, correct, unknown = probes(3, unknown=1000)
    for target in (0.1, 0.05, 0.01):
        calibration = openset.calibrate_threshold(known, unknown, target, known_correct=correct)
        assert calibration.fpir <= target
        assert calibration.fpir == pytest.approx(np.mean(unknown >= calibration.threshold))
        # The best FNIR the target allows, less the knowns scoring in the gap it keeps from the strangers.
        best = openset.fnir_at_fpir(known, correct, unknown, target)
        assert calibration.fnir == pytest.approx(openset.rates_at(calibration.threshold, known, unknown, correct)[1])
        assert best <= calibration.fnir <= best + 0.05
        assert calibration.note == ""


def test_calibration_sits_between_the_scores_it_separates():
    unknown = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    calibration = openset.calibrate_threshold([0.95], unknown, 0.1)
    assert calibration.threshold == pytest.approx(0.95)  # halfway between 0.9 (rejected) and 1.0 (accepted)
    assert calibration.fpir == 0.1


def test_calibration_with_too_few_unknowns_rejects_them_all_and_says_so():
    calibration = openset.calibrate_threshold([0.9, 0.8], [0.1, 0.5, 0.3], 0.01)
    assert calibration.threshold > 0.5 and calibration.fpir == 0.0
    assert "cannot measure an FPIR of 0.01" in calibration.note


@pytest.mark.parametrize(
    ("known", "unknown", "target", "words"),
    [([0.9], [], 0.01, "no unknown images"), ([], [0.1], 0.01, "no validation images"), ([0.9], [0.1], 1.5, "--target-fpir")],
)
def test_calibration_refuses_what_it_cannot_do(known, unknown, target, words):
    with pytest.raises(UsageError, match=words):
        openset.calibrate_threshold(known, unknown, target)


def test_scores_that_are_not_numbers_are_refused():
    with pytest.raises(ValueError, match="finite"):
        openset.fnir_at_fpir([0.1, math.nan], None, [0.2], 0.1)


def test_pair_scores_split_genuine_and_impostor_pairs():
    embeddings = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    genuine, impostor = openset.pair_scores(embeddings, [0, 0, 1, 1])
    assert genuine.size == 2 and impostor.size == 4
    assert genuine.min() > 0.99 and impostor.max() < 0.1
    sampled_genuine, sampled_impostor = openset.pair_scores(np.random.default_rng(0).normal(size=(60, 4)), np.arange(60) % 3, max_pairs=500)
    assert sampled_genuine.size + sampled_impostor.size <= 500


def test_metrics_summary_leaves_out_rates_too_fine_to_measure():
    known, correct, unknown = probes(2, unknown=200)
    summary = openset.openset_metrics(known, correct, unknown, threshold=0.5)
    assert summary["rank1"] == pytest.approx(correct.mean())
    assert not math.isnan(summary["fnir_at_fpir"]["0.1"]) and not math.isnan(summary["fnir_at_fpir"]["0.01"])
    assert math.isnan(summary["fnir_at_fpir"]["0.001"])  # 200 strangers cannot measure 1 in 1000
    assert summary["at_threshold"]["fpir"] == pytest.approx(np.mean(unknown >= 0.5))


def gallery_with_two_classes():
    return openset.Gallery(["ann", "bob"], np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([0, 1]), np.array([5, 5]))


def test_decide_names_accepts_and_rejects():
    logits = np.array([[4.0, 0.0], [0.1, 0.0]])
    decisions = openset.decide(logits, ["ann", "bob"], openset=openset.OpenSet("softmax", 0.01, {"softmax": {"threshold": 0.8}}))
    assert [d["identity"] for d in decisions] == ["ann", "unknown"]
    assert [d["accepted"] for d in decisions] == [True, False]
    assert decisions[1]["score"] == pytest.approx(np.exp(0.1) / (np.exp(0.1) + 1))
    assert decisions[0]["top"][0] == {"name": "ann", "id": 0, "probability": pytest.approx(decisions[0]["score"])}
    assert decisions[0]["threshold"] == 0.8 and decisions[0]["score_name"] == "softmax"
    overridden = openset.decide(logits, ["ann", "bob"], openset=openset.OpenSet("softmax", 0.01, {"softmax": {"threshold": 0.8}}), threshold=0.5)
    assert overridden[1]["identity"] == "ann"


def test_decide_without_openset_data_accepts_every_image():
    decisions = openset.decide(np.array([[0.0, 0.1]]), ["ann", "bob"])
    assert decisions[0]["identity"] == "bob" and decisions[0]["accepted"] and decisions[0]["threshold"] is None


def test_decide_names_an_enrolled_person_by_the_gallery():
    gallery = gallery_with_two_classes().with_people(["cy"], np.array([[1.0, 1.0]]), [1])
    data = openset.OpenSet("softmax", 0.01, {"softmax": {"threshold": 0.9}, "centroid": {"threshold": 0.9}}, gallery=gallery)
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    embeddings = np.array([[0.7, 0.72], [0.0, 1.0], [-1.0, 0.0]])
    decisions = openset.decide(logits, ["ann", "bob"], embeddings=embeddings, openset=data)
    assert [d["identity"] for d in decisions] == ["cy", "bob", "unknown"]
    assert {d["score_name"] for d in decisions} == {"centroid"}
    assert gallery.enrolled == ["cy"] and gallery.without("cy").enrolled == []


def test_openset_files_round_trip(tmp_path):
    gallery = gallery_with_two_classes()
    (tmp_path / openset.GALLERY_FILE).write_bytes(gallery.to_bytes())
    data = openset.OpenSet("centroid", 0.01, {"centroid": {"threshold": 0.4}}, logit_scale=None)
    (tmp_path / openset.OPENSET_FILE).write_text(__import__("json").dumps(data.to_json()))
    read = openset.OpenSet.read(tmp_path)
    assert read.score == "centroid" and read.threshold("centroid") == 0.4
    assert read.gallery.names == ["ann", "bob"] and read.gallery.embeddings.dtype == np.float32
    (tmp_path / openset.GALLERY_FILE).write_bytes(b"not a zip")
    with pytest.raises(Exception, match="gallery.npz is damaged"):
        openset.OpenSet.read(tmp_path)
    assert openset.OpenSet.read(tmp_path / "nothing") is None


def test_openset_module_imports_no_torch():
    code = "import sys, facekit.openset; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_an_image_nearest_an_enrolled_person_is_held_to_the_enrolled_threshold():
    gallery = gallery_with_two_classes().with_people(["cy"], np.array([[1.0, 1.0]]), [1])
    calibration = {"centroid": {"threshold": 0.99}, openset.ENROLLED: {"threshold": 0.9}}
    data = openset.OpenSet("centroid", 0.01, calibration, gallery=gallery)
    embeddings = np.array([[0.75, 0.66], [1.0, 0.3]])  # cos 0.997 to cy; cos 0.958 to ann (below 0.99)
    decisions = openset.decide(np.zeros((2, 2)), ["ann", "bob"], embeddings=embeddings, openset=data)
    assert [d["identity"] for d in decisions] == ["cy", "unknown"]
    assert [d["threshold"] for d in decisions] == [0.9, 0.99]
    overridden = openset.decide(np.zeros((2, 2)), ["ann", "bob"], embeddings=embeddings, openset=data, threshold=0.95)
    assert [d["identity"] for d in overridden] == ["cy", "ann"] and {d["threshold"] for d in overridden} == {0.95}


def test_no_images_no_decisions():
    data = openset.OpenSet("centroid", 0.01, {"centroid": {"threshold": 0.5}}, gallery=gallery_with_two_classes())
    assert openset.decide(np.zeros((0, 2)), ["ann", "bob"], embeddings=np.zeros((0, 0)), openset=data) == []
