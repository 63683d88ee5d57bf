"""Per-class metrics of a classifier, as the 2019 study defines them (docs/report.md).

Everything is computed from the confusion counts with plain integer arithmetic, so the numbers
are exact, fast and free of division warnings. The counts are kept sparse (only the (true,
predicted) pairs that occur), so memory grows with the test samples and the classes, never with
classes squared: 50,000 classes need megabytes, where a dense matrix would need 20 GB.

Conventions:

- ``accuracy_c`` is the study's per-class accuracy: correct predictions of class c over the
  samples of class c, i.e. equal to ``recall_c``.
- ``bcr_c = (precision_c + recall_c) / 2`` and ``aggregated_c`` is the mean of accuracy,
  precision, recall and BCR.
- A class that is never predicted has precision 0 (scikit-learn's ``zero_division=0``).
- A class absent from the test split (support 0) has no defined recall, so its per-class metrics
  are NaN ("not measured"): it is left out of every average and ranking, and reports show it as
  ``-``. Its wrong predictions still count against the true classes' recall.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

# The study's per-class columns, in the order of its Tables 3-5.
STUDY_METRICS = ("accuracy", "precision", "recall", "bcr", "aggregated")
METRICS = (*STUDY_METRICS, "f1")
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "precision": "Precision",
    "recall": "Recall",
    "bcr": "BCR",
    "aggregated": "Aggregated",
    "f1": "F1",
}


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> "ConfusionCounts":
    """The non-zero cells of the confusion matrix of ``y_pred`` against ``y_true`` (class ids)."""
    y_true = _labels(y_true, num_classes, "y_true")
    y_pred = _labels(y_pred, num_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length ({y_true.size} vs {y_pred.size})")
    # One int64 code per sample (true * C + predicted, below 2**63 for any C under 3 billion);
    # np.unique sorts the codes, so the cells come out ordered by (true, predicted).
    cells, counts = np.unique(y_true * num_classes + y_pred, return_counts=True)
    true, predicted = np.divmod(cells, num_classes)
    return ConfusionCounts(num_classes, true, predicted, counts.astype(np.int64))


def _labels(values: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    values = np.asarray(values).astype(np.int64, copy=False).ravel()
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"{name} holds class ids outside 0..{num_classes - 1}")
    return values


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (no warnings)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


@dataclass(frozen=True)
class Confusion:
    """One kind of mistake: ``count`` samples of ``true`` predicted as ``predicted``."""

    true: int
    predicted: int
    count: int
    share: float  # of the true class's test samples


@dataclass(frozen=True, eq=False)  # eq would compare arrays element-wise
class ConfusionCounts:
    """A confusion matrix stored sparsely: ``count[i]`` test samples of class ``true[i]`` were
    predicted as ``predicted[i]``; pairs that never occur are not stored. Ordered by (true, predicted)."""

    num_classes: int
    true: np.ndarray  # (K,) int64
    predicted: np.ndarray  # (K,) int64
    count: np.ndarray  # (K,) int64, all > 0

    def per_true_class(self) -> np.ndarray:
        """Test samples per true class (the dense matrix's row sums)."""
        return self._sum_by(self.true)

    def per_predicted_class(self) -> np.ndarray:
        """Test samples predicted as each class (the dense matrix's column sums)."""
        return self._sum_by(self.predicted)

    def diagonal(self) -> np.ndarray:
        """Correct predictions per class."""
        right = self.true == self.predicted
        return self._sum_by(self.true[right], self.count[right])

    def _sum_by(self, ids: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        counts = self.count if counts is None else counts
        # Integer sums by class without bincount's float64 weights: add.at keeps int64 exact.
        totals = np.zeros(self.num_classes, dtype=np.int64)
        np.add.at(totals, ids, counts)
        return totals

    def matrix(self, class_ids: Sequence[int] | None = None) -> np.ndarray:
        """The dense counts among ``class_ids`` (rows = true, columns = predicted, in the order
        given), or among all classes when None: for plots and checks of a few classes only."""
        ids = np.arange(self.num_classes) if class_ids is None else np.asarray(class_ids, dtype=np.int64)
        position = np.full(self.num_classes, -1, dtype=np.int64)
        position[ids] = np.arange(ids.size)
        rows, cols = position[self.true], position[self.predicted]
        inside = (rows >= 0) & (cols >= 0)
        dense = np.zeros((ids.size, ids.size), dtype=np.int64)
        dense[rows[inside], cols[inside]] = self.count[inside]
        return dense


@dataclass(frozen=True, eq=False)  # eq would compare arrays element-wise
class ClassMetrics:
    """Per-class metrics from the confusion counts; build it with :func:`per_class_metrics`."""

    confusion: ConfusionCounts

    @property
    def num_classes(self) -> int:
        return self.confusion.num_classes

    @cached_property
    def support(self) -> np.ndarray:
        """Test samples per true class."""
        return self.confusion.per_true_class()

    @cached_property
    def predicted(self) -> np.ndarray:
        """Test samples predicted as each class."""
        return self.confusion.per_predicted_class()

    @cached_property
    def true_positives(self) -> np.ndarray:
        return self.confusion.diagonal()

    @cached_property
    def measured(self) -> np.ndarray:
        """Classes with test samples: the only ones whose metrics are defined."""
        return self.support > 0

    def _per_class(self, values: np.ndarray) -> np.ndarray:
        values = values.astype(np.float64)
        values[~self.measured] = np.nan
        return values

    @cached_property
    def precision(self) -> np.ndarray:
        return self._per_class(_ratio(self.true_positives, self.predicted))

    @cached_property
    def recall(self) -> np.ndarray:
        return self._per_class(_ratio(self.true_positives, self.support))

    @property
    def accuracy(self) -> np.ndarray:
        """The study's per-class accuracy, which is recall by its definition (section 5.4)."""
        return self.recall

    @cached_property
    def bcr(self) -> np.ndarray:
        return (self.precision + self.recall) / 2

    @cached_property
    def aggregated(self) -> np.ndarray:
        return (self.accuracy + self.precision + self.recall + self.bcr) / 4

    @cached_property
    def f1(self) -> np.ndarray:
        # 2TP / (2TP + FP + FN): the harmonic mean of precision and recall, 0 when both are 0.
        errors = (self.predicted - self.true_positives) + (self.support - self.true_positives)
        return self._per_class(_ratio(2 * self.true_positives, 2 * self.true_positives + errors))

    def metric(self, name: str) -> np.ndarray:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")
        return getattr(self, name)

    # Summaries -----------------------------------------------------------------------------

    @property
    def total(self) -> int:
        return int(self.support.sum())

    @property
    def overall_accuracy(self) -> float:
        """Correct test predictions over all test samples."""
        return float(self.true_positives.sum() / self.total) if self.total else 0.0

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the measured classes (scikit-learn's ``balanced_accuracy_score``)."""
        return self.macro("recall")

    def macro(self, name: str) -> float:
        """Unweighted mean of a metric over the measured classes."""
        if not self.measured.any():
            return 0.0
        return float(self.metric(name)[self.measured].mean())

    def weighted(self, name: str) -> float:
        """Mean of a metric over the measured classes, weighted by their support."""
        if not self.total:
            return 0.0
        return float(np.average(self.metric(name)[self.measured], weights=self.support[self.measured]))

    @property
    def never_predicted(self) -> np.ndarray:
        """Measured classes that the model never predicted (precision 0)."""
        return np.flatnonzero(self.measured & (self.predicted == 0))

    @property
    def unmeasured(self) -> np.ndarray:
        """Classes with no test samples."""
        return np.flatnonzero(~self.measured)

    # Rankings ------------------------------------------------------------------------------

    def top_k(self, k: int, by: str = "aggregated") -> list[int]:
        """The k measured classes with the highest score; ties go to the lower class id."""
        return self._ranked(by, descending=True)[: max(k, 0)]

    def worst_k(self, k: int, by: str = "aggregated") -> list[int]:
        """The k measured classes with the lowest score; ties go to the lower class id."""
        return self._ranked(by, descending=False)[: max(k, 0)]

    def _ranked(self, by: str, *, descending: bool) -> list[int]:
        ids = np.flatnonzero(self.measured)
        scores = self.metric(by)[ids]
        # lexsort sorts by the last key first: score, then class id for a stable tie-break.
        order = np.lexsort((ids, -scores if descending else scores))
        return [int(i) for i in ids[order]]

    def confusions(self, k: int) -> list[Confusion]:
        """The k most frequent mistakes, largest count first, ties by (true, predicted) id."""
        cells = self.confusion
        wrong = cells.true != cells.predicted
        true, predicted, counts = cells.true[wrong], cells.predicted[wrong], cells.count[wrong]
        order = np.lexsort((predicted, true, -counts))[: max(k, 0)]
        return [
            Confusion(int(t), int(p), int(c), float(c / self.support[t]))
            for t, p, c in zip(true[order], predicted[order], counts[order])
        ]

    def most_confused_classes(self, n: int) -> list[int]:
        """The n classes involved in the most mistakes (missed plus wrongly predicted), by id on ties."""
        mistakes = (self.support - self.true_positives) + (self.predicted - self.true_positives)
        ids = np.flatnonzero(mistakes)
        order = np.lexsort((ids, -mistakes[ids]))[: max(n, 0)]
        return [int(i) for i in ids[order]]


def per_class_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> ClassMetrics:
    """Per-class metrics of predictions ``y_pred`` against labels ``y_true`` (class ids)."""
    return ClassMetrics(confusion_counts(y_true, y_pred, num_classes))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks on ties); 0 when either side is constant."""
    rx, ry = _average_ranks(np.asarray(x, float)), _average_ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=float)
    ranks[order] = np.arange(values.size, dtype=float)
    # Tied values share the mean of their ranks.
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]
