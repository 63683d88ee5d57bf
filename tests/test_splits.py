"""The built-in split strategies: stratified, deterministic, tiny classes handled by rule."""

from __future__ import annotations

import numpy as np
import pytest

from facekit.api import SplitOptions
from facekit.builtins.splits import holdout_split, kfold_split
from facekit.errors import UsageError

IMBALANCED = np.repeat(np.arange(12), [1, 2, 3, 4, 5, 7, 9, 13, 20, 31, 40, 60])


def _within_one_image(labels, part, fraction):
    sizes = np.bincount(labels, minlength=labels.max() + 1)
    got = np.bincount(labels[part], minlength=labels.max() + 1)
    return np.abs(got - sizes * fraction).max() < 1


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("test_size,val_size", [(0.2, 0.1), (0.25, 0.15), (0.3, 0.0)])
def test_holdout_is_stratified_within_one_image(seed, test_size, val_size):
    plan = holdout_split(IMBALANCED, SplitOptions(seed=seed, test_size=test_size, val_size=val_size))
    (fold,) = plan.folds
    assert _within_one_image(IMBALANCED, plan.test, test_size)
    assert _within_one_image(IMBALANCED, fold.val, val_size)
    assert _within_one_image(IMBALANCED, fold.train, 1 - test_size - val_size)
    everything = np.concatenate([fold.train, fold.val, plan.test])
    assert sorted(everything.tolist()) == list(range(len(IMBALANCED)))
    assert set(IMBALANCED[fold.train]) == set(IMBALANCED)  # every class is trained on
    assert abs(len(plan.test) - test_size * len(IMBALANCED)) <= 1


def test_tiny_classes_stay_in_training_and_are_noted():
    plan = holdout_split(IMBALANCED, SplitOptions())
    assert 0 not in IMBALANCED[plan.test] and 0 in IMBALANCED[plan.folds[0].train]
    assert any("no test image" in note for note in plan.notes)


@pytest.mark.parametrize("folds", [2, 5])
def test_kfold_folds_disjoint_cover_and_share_one_test(folds):
    plan = kfold_split(IMBALANCED, SplitOptions(seed=3, folds=folds))
    assert len(plan.folds) == folds
    rest = np.setdiff1d(np.arange(len(IMBALANCED)), plan.test)
    vals = [f.val for f in plan.folds]
    assert sorted(np.concatenate(vals).tolist()) == rest.tolist()  # disjoint and covering
    for fold in plan.folds:
        assert not np.intersect1d(fold.train, fold.val).size and not np.intersect1d(fold.train, plan.test).size
        assert sorted(np.concatenate([fold.train, fold.val]).tolist()) == rest.tolist()
        share = np.bincount(IMBALANCED[rest], minlength=12) / folds
        assert np.abs(np.bincount(IMBALANCED[fold.val], minlength=12) - share).max() < 1
    assert _within_one_image(IMBALANCED, plan.test, 0.2)
    assert plan.notes  # the 1-image class (and, for 5 folds, the small ones) are named


def test_splits_are_deterministic_per_seed():
    for split in (holdout_split, kfold_split):
        a, b = split(IMBALANCED, SplitOptions(seed=5)), split(IMBALANCED, SplitOptions(seed=5))
        assert np.array_equal(a.test, b.test)
        assert all(np.array_equal(x.val, y.val) and np.array_equal(x.train, y.train) for x, y in zip(a.folds, b.folds))
        c = split(IMBALANCED, SplitOptions(seed=6))
        assert not np.array_equal(a.test, c.test)


@pytest.mark.parametrize(
    "split,options,message",
    [
        (kfold_split, SplitOptions(folds=1), "at least 2 folds"),
        (holdout_split, SplitOptions(test_size=1.2), "out of range"),
        (holdout_split, SplitOptions(test_size=0.6, val_size=0.5), "no training images"),
        (kfold_split, SplitOptions(folds=50), "use fewer folds"),
    ],
)
def test_impossible_requests_are_usage_errors(split, options, message):
    with pytest.raises(UsageError, match=message):
        split(np.repeat(np.arange(3), 5), options)


def test_a_data_set_too_small_for_a_validation_image():
    with pytest.raises(UsageError, match="no validation image"):
        holdout_split(np.array([0, 0, 1, 1]), SplitOptions(val_size=0.1))
