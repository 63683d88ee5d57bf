"""Identical images where they distort results: in two identities, or on both sides of a split.

Two files are the same image when their decoded pixels are identical (the index's
``pixel_hashes``), whatever their names or encodings. Such a pair in two identities teaches
the model a contradiction; across the test and training parts it inflates the test accuracy
(the model is judged on an image it trained on), and across a fold's training and validation
parts it inflates the validation figures that choose the kept model. ``facekit data check``
lists every case; ``facekit train`` warns, naming the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

SHOWN = 5  # leak lines `train` prints before "and N more"


@dataclass(frozen=True)
class Leak:
    """Files holding one identical image, and where that distorts results."""

    files: list[str]
    where: str  # "2 identities (alice, bob)", "test and training parts", ...

    def line(self) -> str:
        names = " = ".join(self.files[:3]) + (f" (and {len(self.files) - 3} more)" if len(self.files) > 3 else "")
        return f"identical images in {self.where}: {names}"


def identical_groups(files: Sequence[str], pixel_hashes: Mapping[str, str]) -> list[np.ndarray]:
    """Positions in ``files`` of files that share their pixels, a group per image that occurs more
    than once (files without a hash, e.g. indexed without verifying, are in none)."""
    hashed = [i for i, name in enumerate(files) if pixel_hashes.get(name)]
    if not hashed:
        return []
    keys = np.asarray([pixel_hashes[files[i]] for i in hashed])
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(np.asarray(hashed, dtype=np.int64)[order], np.cumsum(counts)[:-1])
    return [group for group in groups if len(group) > 1]


def find_leaks(
    files: Sequence[str], labels: np.ndarray, classes: Sequence[str], pixel_hashes: Mapping[str, str], plan: Any = None
) -> list[Leak]:
    """Every group of identical images that spans identities, or (given a split ``plan``) split parts."""
    labels = np.asarray(labels)
    parts = _parts(plan, len(files)) if plan is not None else None
    leaks = []
    for group in identical_groups(files, pixel_hashes):
        names = [files[i] for i in group]
        owners = sorted({classes[int(labels[i])] for i in group})
        if len(owners) > 1:
            leaks.append(Leak(names, f"{len(owners)} identities ({', '.join(owners)})"))
        elif parts is not None:
            where = _split_leak(group, parts)
            if where:
                leaks.append(Leak(names, where))
    return leaks


def _parts(plan: Any, count: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    test = np.zeros(count, dtype=bool)
    test[np.asarray(plan.test, dtype=np.int64)] = True
    folds = []
    for fold in plan.folds:
        train, val = np.zeros(count, dtype=bool), np.zeros(count, dtype=bool)
        train[np.asarray(fold.train, dtype=np.int64)] = True
        val[np.asarray(fold.val, dtype=np.int64)] = True
        folds.append((train, val))
    return test, folds


def _split_leak(group: np.ndarray, parts) -> str | None:
    test, folds = parts
    if test[group].any() and not test[group].all():
        return "the test and training parts of the split"
    for k, (train, val) in enumerate(folds):
        if train[group].any() and val[group].any():
            return "the training and validation parts" + (f" of fold {k}" if len(folds) > 1 else "")
    return None


def leak_lines(leaks: list[Leak]) -> list[str]:
    """What `train` prints: the first few leaks, then how many more."""
    lines = [f"warning: {leak.line()}" for leak in leaks[:SHOWN]]
    if len(leaks) > SHOWN:
        lines.append(f"warning: and {len(leaks) - SHOWN} more groups of identical images (`facekit data check` lists them all)")
    return lines
