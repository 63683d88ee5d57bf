"""Per-class metrics against scikit-learn and the 2019 study's own numbers."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    precision_recall_fscore_support,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from facekit.metrics import METRICS, per_class_metrics, spearman


@pytest.fixture(autouse=True)
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def hand_made_predictions(seed: int, num_classes: int = 12, n: int = 150):
    """Imbalanced labels, a mostly-right model, one class never predicted, one never present."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.2, 3.0, num_classes)
    absent = num_classes - 1
    weights[absent] = 0.0
    y_true = rng.choice(num_classes, size=n, p=weights / weights.sum())
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, num_classes, n))
    never_predicted = 0
    y_pred[y_pred == never_predicted] = 1
    return y_true, y_pred, num_classes


def sklearn_quietly(function, *args, **kwargs):
    """scikit-learn warns about classes absent from y_true; that is expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.parametrize("seed", range(6))
def test_every_metric_equals_scikit_learn(seed):
    y_true, y_pred, num_classes = hand_made_predictions(seed)
    metrics = per_class_metrics(y_true, y_pred, num_classes)
    labels = np.arange(num_classes)
    measured = metrics.measured

    np.testing.assert_array_equal(metrics.confusion.matrix(), sk_confusion_matrix(y_true, y_pred, labels=labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    np.testing.assert_array_equal(metrics.support, support)
    np.testing.assert_allclose(metrics.precision[measured], precision[measured], rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.recall[measured], recall[measured], rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.accuracy[measured], recall[measured], rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.f1[measured], f1[measured], rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.bcr[measured], (precision + recall)[measured] / 2, atol=1e-12)

    measured_labels = labels[measured]
    for average, ours in (("macro", metrics.macro), ("weighted", metrics.weighted)):
        p, r, f, _ = sklearn_quietly(
            precision_recall_fscore_support,
            y_true, y_pred, labels=measured_labels, average=average, zero_division=0,
        )
        assert ours("precision") == pytest.approx(p, abs=1e-12)
        assert ours("recall") == pytest.approx(r, abs=1e-12)
        assert ours("f1") == pytest.approx(f, abs=1e-12)

    assert metrics.balanced_accuracy == pytest.approx(
        sklearn_quietly(balanced_accuracy_score, y_true, y_pred), abs=1e-12
    )
    assert metrics.overall_accuracy == pytest.approx(np.mean(y_true == y_pred), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_sparse_counts_equal_the_dense_matrix(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 300))
    n = int(rng.integers(0, 2000))
    y_true, y_pred = rng.integers(0, num_classes, n), rng.integers(0, num_classes, n)
    y_pred[: n // 2] = y_true[: n // 2]  # a diagonal worth measuring
    dense = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(dense, (y_true, y_pred), 1)
    metrics = per_class_metrics(y_true, y_pred, num_classes)
    cells = metrics.confusion

    np.testing.assert_array_equal(cells.matrix(), dense)
    assert (cells.count > 0).all() and cells.count.sum() == n
    np.testing.assert_array_equal(metrics.support, dense.sum(axis=1))
    np.testing.assert_array_equal(metrics.predicted, dense.sum(axis=0))
    np.testing.assert_array_equal(metrics.true_positives, np.diag(dense))
    chosen = rng.choice(num_classes, size=min(7, num_classes), replace=False)
    np.testing.assert_array_equal(cells.matrix(chosen), dense[np.ix_(chosen, chosen)])

    # The top confusions from the sparse counts are the dense matrix's largest off-diagonal cells.
    mistakes = dense.copy()
    np.fill_diagonal(mistakes, 0)
    true, predicted = np.nonzero(mistakes)
    order = np.lexsort((predicted, true, -mistakes[true, predicted]))[:15]
    expected = [(int(true[i]), int(predicted[i]), int(mistakes[true[i], predicted[i]])) for i in order]
    assert [(c.true, c.predicted, c.count) for c in metrics.confusions(15)] == expected


def test_fifty_thousand_classes_need_megabytes_not_a_dense_matrix():
    # A dense 50k x 50k int64 matrix would be 20 GB; per-class vectors are 400 kB each.
    num_classes, n = 50_000, 100_000
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, num_classes, n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, num_classes, n))
    tracemalloc.start()
    try:
        metrics = per_class_metrics(y_true, y_pred, num_classes)
        scores = metrics.aggregated
        worst = metrics.worst_k(10)
        confusions = metrics.confusions(10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert metrics.support.sum() == n and scores.shape == (num_classes,)
    assert len(worst) == 10 and all(metrics.aggregated[i] <= metrics.aggregated[j] for i, j in zip(worst, worst[1:]))
    assert confusions[0].count >= confusions[-1].count >= 1
    assert metrics.overall_accuracy == pytest.approx(np.mean(y_true == y_pred))


def test_study_row_sheikh_hasina():
    # Table 3, baseline, rank 1: 5 of 5 right (recall 1.0), 8 predictions of the class (P=0.625).
    y_true = np.array([0] * 5 + [1] * 3)
    y_pred = np.array([0] * 8)
    metrics = per_class_metrics(y_true, y_pred, 2)
    assert metrics.precision[0] == 0.625
    assert metrics.recall[0] == 1.0
    assert metrics.accuracy[0] == 1.0
    assert metrics.bcr[0] == 0.8125
    assert metrics.aggregated[0] == 0.859375
    assert f"{metrics.aggregated[0]:.3f}" == "0.859"


def test_never_predicted_class_has_precision_zero_not_nan():
    y_true, y_pred, num_classes = hand_made_predictions(0)
    metrics = per_class_metrics(y_true, y_pred, num_classes)
    assert 0 in metrics.never_predicted
    assert metrics.precision[0] == 0.0
    for name in METRICS:
        assert not np.isnan(metrics.metric(name)[metrics.measured]).any(), name
        assert not np.isnan(metrics.macro(name))
        assert not np.isnan(metrics.weighted(name))


def test_absent_class_is_unmeasured_and_left_out_of_averages():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])  # class 2 is predicted once but has no test samples
    metrics = per_class_metrics(y_true, y_pred, 3)
    assert metrics.unmeasured.tolist() == [2]
    assert np.isnan(metrics.aggregated[2])
    assert metrics.macro("recall") == 0.75  # (0.5 + 1.0) / 2, class 2 not counted
    assert metrics.top_k(5) == [1, 0]
    assert metrics.worst_k(5) == [0, 1]


def test_rankings_are_stable_on_ties():
    # Classes 0, 2, 3 all perfect; 1 and 4 both half right: ties go to the lower id.
    y_true = np.array([0, 1, 1, 2, 3, 4, 4])
    y_pred = np.array([0, 1, 5, 2, 3, 4, 5])
    metrics = per_class_metrics(y_true, y_pred, 6)
    assert metrics.top_k(3) == [0, 2, 3]
    assert metrics.worst_k(2) == [1, 4]
    assert metrics.top_k(0) == []
    assert metrics.worst_k(100) == [1, 4, 0, 2, 3]  # class 5 has no test samples


def test_confusions_and_most_confused_classes():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 1, 0, 2, 0])
    metrics = per_class_metrics(y_true, y_pred, 3)
    top = metrics.confusions(3)
    assert [(c.true, c.predicted, c.count) for c in top] == [(0, 1, 2), (0, 2, 1), (1, 0, 1)]
    assert top[0].share == 0.5
    assert metrics.confusions(0) == []
    assert metrics.most_confused_classes(2) == [0, 1]


def test_empty_predictions_give_zeros_not_errors():
    metrics = per_class_metrics(np.array([], int), np.array([], int), 3)
    assert metrics.overall_accuracy == 0.0
    assert metrics.macro("aggregated") == 0.0
    assert metrics.weighted("aggregated") == 0.0
    assert metrics.top_k(3) == []


def test_out_of_range_labels_are_rejected():
    with pytest.raises(ValueError, match="outside 0..2"):
        per_class_metrics(np.array([0, 3]), np.array([0, 1]), 3)


def test_spearman_matches_scipy_style_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 30), rng.random(30)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
