"""A run's data before its folder exists: the index, the unknown people set aside, the split plan.

Everything here is told to the user as it is found (unreadable files skipped, the split's notes,
images shared across identities or splits), and every refusal comes before anything is written.
"""

from __future__ import annotations

from typing import Any

from facekit.config import TrainConfig
from facekit.errors import UsageError
from facekit.specs import SplitOptions, SplitPlan, SplitSpec
from facekit.training.progress import Progress


def plan_data(config: TrainConfig, split_spec: SplitSpec, progress: Progress) -> tuple[Any, SplitPlan, dict[str, Any] | None]:
    """The data set's index (less any people held out as unknowns), its split plan, and the open-set split (or None)."""
    from facekit.data.index import index_dataset, skipped_lines
    from facekit.data.leakage import find_leaks, leak_lines
    from facekit.openset_training import openset_setup

    progress.message(f"indexing {config.data}")
    index = index_dataset(config.data)
    for line in skipped_lines(index.bad + index.skipped):
        progress.message(line)
    index, openset_split = openset_setup(index, fraction=config.unknown_identities, strangers=config.strangers, seed=config.seed)
    options = SplitOptions(seed=config.seed, test_size=config.test_size, val_size=config.val_size, folds=config.folds)
    plan = split_spec.split(index.labels, options)
    if openset_split is not None and any(len(fold.val) == 0 for fold in plan.folds):
        raise UsageError("open-set evaluation calibrates its threshold on validation images: give --val-size above 0")
    from facekit.data.check import split_notes

    for note in split_notes(plan, index.labels, index.classes, split_spec.name):  # by name, as `data check` says it
        progress.message(note)
    for line in leak_lines(find_leaks(index.files, index.labels, index.classes, index.pixel_hashes, plan)):
        progress.message(line)
    return index, plan, openset_split
