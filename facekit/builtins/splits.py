"""Built-in split strategies: stratified holdout and stratified K-fold with a fixed test split.

Rules (also in docs/data.md):

- Stratified rounding: every class's count in every split is its proportional share rounded
  down or up, so it is always within one image of that share. Which classes round up is chosen
  so that the split totals come as close as possible to the requested sizes.
- A class always keeps at least one training image. A class too small to get a test (or
  validation) image under its proportional share simply has none there: it stays in training
  and is named in ``SplitPlan.notes`` (it is trained on but not measured).
- K-fold: the non-test images of each class are dealt over the K folds as evenly as possible
  (fold counts differ by at most one). A class with fewer than K non-test images is validated in
  only some folds, and a class with one non-test image has no training image in the fold that
  validates on it; both are named in the notes.
- Everything is a deterministic function of the labels and ``SplitOptions.seed``.
"""

from __future__ import annotations

import numpy as np

from facekit import hookimpl
from facekit.api import Fold, SplitOptions, SplitPlan, SplitSpec
from facekit.errors import UsageError

_EPS = 1e-9


@hookimpl
def register_splits(register):
    register(SplitSpec("holdout", holdout_split, "Stratified train / validation / test."))
    register(SplitSpec("kfold", kfold_split, "Stratified K folds over the non-test part; fixed test split."))


def holdout_split(labels: np.ndarray, options: SplitOptions) -> SplitPlan:
    """One fold: stratified train / validation / test by ``options.val_size`` and ``test_size``."""
    labels = _as_labels(labels)
    _check_fraction("test size", options.test_size)
    _check_fraction("validation size", options.val_size)
    if options.test_size + options.val_size >= 1:
        raise UsageError(
            f"test size {options.test_size} + validation size {options.val_size} leave no training images; "
            "make their sum smaller than 1"
        )
    rng = np.random.default_rng(options.seed)
    classes, members = _members_by_class(labels, rng)
    sizes = np.array([len(m) for m in members])
    counts = _stratified_counts(sizes, np.array([1 - options.test_size - options.val_size, options.val_size, options.test_size]), rng)
    train, val, test = _take(members, counts)
    if options.val_size > 0 and len(val) == 0:
        raise UsageError(
            f"validation size {options.val_size} gives no validation image for {len(labels)} images; "
            "raise --val-size or add images"
        )
    if options.test_size > 0 and len(test) == 0:
        raise UsageError(
            f"test size {options.test_size} gives no test image for {len(labels)} images; raise --test-size or add images"
        )
    notes = _missing_notes(classes, counts[:, 2], "test", options.test_size)
    notes += _missing_notes(classes, counts[:, 1], "validation", options.val_size)
    return SplitPlan(test=test, folds=[Fold(train=train, val=val)], notes=notes)


def kfold_split(labels: np.ndarray, options: SplitOptions) -> SplitPlan:
    """A stratified test split, then K stratified folds over the rest (``val_size`` is not used)."""
    labels = _as_labels(labels)
    _check_fraction("test size", options.test_size)
    k = options.folds
    if k < 2:
        raise UsageError(f"--folds {k}: k-fold needs at least 2 folds (use --split holdout for one model)")
    rng = np.random.default_rng(options.seed)
    classes, members = _members_by_class(labels, rng)
    sizes = np.array([len(m) for m in members])
    counts = _stratified_counts(sizes, np.array([1 - options.test_size, options.test_size]), rng)
    rest, test = _take(members, counts, concatenate=False)
    remaining = int(sum(len(r) for r in rest))
    if remaining < k:
        raise UsageError(f"--folds {k}: only {remaining} images outside the test split; use fewer folds")

    fold_totals = np.zeros(k, dtype=np.int64)
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    # Big classes first, each fold's extra images going to the currently smallest folds,
    # keeps the fold sizes within about one image of each other.
    for c in sorted(range(len(rest)), key=lambda c: -len(rest[c])):
        per_fold = np.full(k, len(rest[c]) // k)
        extra = len(rest[c]) - per_fold.sum()
        ties = rng.permutation(k)
        receivers = ties[np.argsort(fold_totals[ties], kind="stable")][:extra]
        per_fold[receivers] += 1
        start = 0
        for f in range(k):
            parts[f].append(rest[c][start : start + per_fold[f]])
            start += per_fold[f]
        fold_totals += per_fold
    fold_val = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    folds = [
        Fold(train=np.sort(np.concatenate([fold_val[g] for g in range(k) if g != f])), val=fold_val[f]) for f in range(k)
    ]
    notes = _missing_notes(classes, counts[:, 1], "test", options.test_size)
    rest_sizes = np.array([len(r) for r in rest])
    partial = [int(classes[c]) for c in np.flatnonzero((rest_sizes < k) & (rest_sizes > 1))]
    single = [int(classes[c]) for c in np.flatnonzero(rest_sizes == 1)]
    if partial:
        notes.append(
            f"{len(partial)} classes have fewer than {k} images outside the test split and are validated "
            f"in only some folds: {_id_list(partial)}"
        )
    if single:
        notes.append(
            f"{len(single)} classes have one image outside the test split; the fold that validates on it "
            f"has none of them in training: {_id_list(single)}"
        )
    return SplitPlan(test=test, folds=folds, notes=notes)


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise UsageError("the data set has no images to split")
    return labels.astype(np.int64, copy=False)


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise UsageError(f"{name} {value} is out of range; give a fraction in [0, 1)")


def _members_by_class(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    classes = np.unique(labels)
    return classes, [rng.permutation(np.flatnonzero(labels == c)) for c in classes]


def _stratified_counts(sizes: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Counts per (class, part): each the class's share rounded down or up, rows summing to the class size.

    Part 0 is training and never rounds down to zero. Each class rounds up exactly as many parts
    as its fractional remainders add up to; the parts still furthest below their overall target
    get them, so the part totals track the requested sizes.
    """
    shares = sizes[:, None] * fractions[None, :]
    counts = np.floor(shares + _EPS).astype(np.int64)
    remainders = np.where(shares - counts > _EPS, shares - counts, 0.0)
    ups_left = sizes - counts.sum(axis=1)
    total = int(sizes.sum())
    targets = np.round(total * fractions).astype(np.int64)
    targets[0] = total - targets[1:].sum()

    # Every class keeps a training image: round training up first where it would be zero.
    force = (counts[:, 0] == 0) & (sizes > 0)
    counts[force, 0] += 1
    remainders[force, 0] = 0.0
    ups_left[force] -= 1

    for c in rng.permutation(len(sizes)):
        for _ in range(int(ups_left[c])):
            eligible = np.flatnonzero(remainders[c] > 0)
            need = targets[eligible] - counts[:, eligible].sum(axis=0)
            # Most needed part first; among equals, the larger remainder.
            best = eligible[np.lexsort((-remainders[c, eligible], -need))[0]]
            counts[c, best] += 1
            remainders[c, best] = 0.0
    return counts


def _take(members: list[np.ndarray], counts: np.ndarray, concatenate: bool = True):
    """Cut each class's shuffled members into consecutive parts of the given counts."""
    per_part: list[list[np.ndarray]] = [[] for _ in range(counts.shape[1])]
    for c, idx in enumerate(members):
        bounds = np.concatenate([[0], np.cumsum(counts[c])])
        for p in range(counts.shape[1]):
            per_part[p].append(idx[bounds[p] : bounds[p + 1]])
    result = [np.sort(np.concatenate(parts)).astype(np.int64) for parts in per_part]
    if concatenate:
        return result
    return per_part[0], result[1]


def _missing_notes(classes: np.ndarray, counts: np.ndarray, part: str, size: float) -> list[str]:
    if size <= 0:
        return []
    missing = [int(classes[c]) for c in np.flatnonzero(counts == 0)]
    if not missing:
        return []
    return [
        f"{len(missing)} classes have no {part} image (their share at {part} size {size} is under one "
        f"image): {_id_list(missing)}"
    ]


def _id_list(ids: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")
