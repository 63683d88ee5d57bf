"""`facekit data check`: what in a data set cannot be used, and how its classes are balanced.

"Too small for the split" follows the split's own rules, whichever registered split it is, by
running it: an identity that gets no test image, or is left out of some fold's validation or
training part (for holdout, no test or no validation image; for k-fold, fewer than K images
outside the test split). ``min_per_class`` additionally flags identities with fewer images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facekit.specs import SplitOptions, SplitPlan, SplitSpec
from facekit.data.index import BadFile, DatasetIndex, scan_dataset
from facekit.data.leakage import find_leaks
from facekit.errors import UsageError



@dataclass
class SmallClass:
    name: str
    images: int
    reason: str


@dataclass
class CheckReport:
    root: str
    split: str
    folds: int
    classes: int
    images: int
    bad: list[BadFile]
    empty_classes: list[str]
    small_classes: list[SmallClass]
    imbalance: dict[str, float]  # min / median / max images per identity
    biggest: list[tuple[str, int]]
    smallest: list[tuple[str, int]]
    problems: list[str] = field(default_factory=list)  # reasons the data set cannot be trained on
    skipped: list[BadFile] = field(default_factory=list)  # left out on purpose: links back into the set, run folders
    notes: list[BadFile] = field(default_factory=list)  # usable files worth a word (a JPEG named .png)
    leaks: list[dict[str, Any]] = field(default_factory=list)  # identical images across identities or split parts

    @property
    def usable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["usable"] = self.usable
        return data


def check_dataset(
    root: str | Path,
    *,
    split: str = "holdout",
    folds: int = 5,
    min_per_class: int | None = None,
    test_size: float = SplitOptions.test_size,
    val_size: float = SplitOptions.val_size,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Decode every image once (cached) and report bad files, empty or small identities, imbalance.

    ``split`` names a registered split strategy (built-in or from a plugin); an unknown name, or
    options it refuses whatever the data, are usage errors raised before any image is decoded.
    """
    from facekit.plugins import splits

    spec = splits().get(split)
    options = SplitOptions(seed=seed, test_size=test_size, val_size=val_size, folds=folds)
    # Two classes with plenty of images for any fold count: a split that refuses them refuses
    # the options (e.g. --folds 1 for kfold), whatever the data set; say so before decoding it.
    spec.split(np.repeat(np.arange(2), 100 * max(folds, 1)), options)
    index = scan_dataset(root, progress=progress)
    counts = index.counts
    problems: list[str] = []
    if len(index.files) == 0:
        problems.append("no usable image: every identity folder is empty or holds only bad files")
    elif index.num_classes < 2:
        problems.append(f"only {index.num_classes} identity has usable images; a classifier needs at least 2")

    small = _small_classes(index, spec, options)
    if min_per_class:
        flagged = {s.name for s in small}
        small += [
            SmallClass(name, int(n), f"fewer than {min_per_class} images")
            for name, n in zip(index.classes, counts)
            if n < min_per_class and name not in flagged
        ]
    order = np.argsort(-counts, kind="stable")
    try:
        plan = spec.split(index.labels, options) if index.num_classes >= 2 else None
    except UsageError:
        plan = None  # too small to split: small_classes says so; identities can still share images
    leaks = find_leaks(index.files, index.labels, index.classes, index.pixel_hashes, plan)
    return CheckReport(
        root=str(index.root),
        split=split,
        folds=folds,
        classes=index.num_classes,
        images=len(index.files),
        bad=index.bad,
        empty_classes=index.empty_classes,
        small_classes=small,
        imbalance={
            "min": int(counts.min()) if len(counts) else 0,
            "median": float(np.median(counts)) if len(counts) else 0.0,
            "max": int(counts.max()) if len(counts) else 0,
        },
        biggest=[(index.classes[c], int(counts[c])) for c in order[:5]],
        smallest=[(index.classes[c], int(counts[c])) for c in order[::-1][:5]],
        problems=problems,
        skipped=index.skipped,
        notes=index.notes,
        leaks=[{"files": leak.files, "where": leak.where} for leak in leaks],
    )


def _small_classes(index: DatasetIndex, spec: SplitSpec, options: SplitOptions) -> list[SmallClass]:
    if index.num_classes < 2:
        return []
    counts = index.counts
    try:
        plan = spec.split(index.labels, options)
    except UsageError as err:  # the whole data set is too small for these sizes
        return [SmallClass(name, int(n), str(err)) for name, n in zip(index.classes, counts)]
    small = []
    for c, name in enumerate(index.classes):
        gaps = _split_gaps(plan, index.labels, c)
        if gaps:
            small.append(SmallClass(name, int(counts[c]), "; ".join(gaps)))
    return small


def split_notes(plan: SplitPlan, labels: np.ndarray, classes: list[str], split: str, limit: int = 10) -> list[str]:
    """What ``facekit train`` says about the split: the identities missing from a part of it, by
    name, as ``facekit data check`` lists them (a plugin's split adds its own notes as they are)."""
    from facekit.plugins import BUILTIN_DISTRIBUTION, splits

    counts = np.bincount(labels, minlength=len(classes))
    small = [(name, int(counts[c]), gaps) for c, name in enumerate(classes) if (gaps := _split_gaps(plan, labels, c))]
    notes = []
    if small:
        shown = ", ".join(f"{name} ({n} image{'s' if n != 1 else ''}: {'; '.join(gaps)})" for name, n, gaps in small[:limit])
        more = f", and {len(small) - limit} more (`facekit data check` lists them all)" if len(small) > limit else ""
        notes.append(f"{len(small)} identit{'ies' if len(small) != 1 else 'y'} too small for the {split} split: {shown}{more}")
    if splits().owner.get(split) != BUILTIN_DISTRIBUTION:
        notes += list(plan.notes)
    return notes


def _split_gaps(plan: SplitPlan, labels: np.ndarray, class_id: int) -> list[str]:
    """Where class ``class_id`` is missing from a part of ``plan`` that other classes have."""
    def has(indices: np.ndarray) -> bool:
        return bool(np.any(labels[indices] == class_id))

    k = len(plan.folds)
    gaps = []
    if len(plan.test) and not has(plan.test):
        gaps.append("no test image")
    validated = sum(has(fold.val) for fold in plan.folds if len(fold.val))
    with_val = sum(1 for fold in plan.folds if len(fold.val))
    if validated < with_val:
        gaps.append("no validation image" if k == 1 else f"validated in only {validated} of {k} folds")
    trained = sum(has(fold.train) for fold in plan.folds)
    if trained < k:
        gaps.append("no training image" if k == 1 else f"no training image in {k - trained} of {k} folds")
    return gaps


def render_check_report(report: CheckReport, console) -> None:
    """Print ``report`` with Rich: tables of problems, then the imbalance summary."""
    from rich.table import Table

    from facekit.text import rich_safe as safe  # folder and file names reach the terminal escaped

    console.print(f"[bold]{safe(report.root)}[/bold]: {report.images} usable images in {report.classes} identities")
    listings = [
        (report.bad, f"{len(report.bad)} bad files (left out)", ("file", "problem")),
        (report.skipped, _count(len(report.skipped), "entry", "entries") + " left out on purpose", ("file or folder", "why")),
        (report.notes, _count(len(report.notes), "file", "files") + " used, with a note", ("file", "note")),
    ]
    for entries, title, columns in listings:
        if entries:
            _print_table(console, title, columns, [(entry.path, entry.reason) for entry in entries])
    if report.leaks:
        title = _count(len(report.leaks), "image", "images") + " present more than once (leakage)"
        rows = [(list(leak["files"]), leak["where"]) for leak in report.leaks]
        _print_table(console, title, ("identical files", "in"), rows)
    if report.empty_classes:
        console.print(
            f"[yellow]{len(report.empty_classes)} identity folders without a usable image (no class id):[/yellow] "
            + ", ".join(map(safe, report.empty_classes))
        )
    if report.small_classes:
        table = Table(title=f"{len(report.small_classes)} identities too small for the {report.split} split", title_justify="left")
        table.add_column("identity")
        table.add_column("images", justify="right")
        table.add_column("why")
        for small in report.small_classes:
            table.add_row(safe(small.name), str(small.images), safe(small.reason))
        console.print(table)
    if report.classes:
        stats = report.imbalance
        console.print(
            f"images per identity: min {stats['min']}, median {stats['median']:g}, max {stats['max']} "
            f"(max/min {stats['max'] / max(stats['min'], 1):.1f}x)"
        )
        console.print("biggest: " + ", ".join(f"{safe(name)} ({n})" for name, n in report.biggest))
        console.print("smallest: " + ", ".join(f"{safe(name)} ({n})" for name, n in report.smallest))
    for problem in report.problems:
        console.print(f"[red]not usable:[/red] {safe(problem)}")
    listed = report.bad or report.empty_classes or report.small_classes or report.skipped or report.notes or report.leaks
    if report.usable and not listed:
        console.print("[green]no problems found[/green]")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _print_table(console: Any, title: str, columns: tuple[str, str], rows: list[tuple[Any, Any]]) -> None:
    """One titled two-column table; every cell made safe for the terminal (names may hold escape
    codes), a list one line per item."""
    from rich.table import Table

    from facekit.text import rich_safe as safe

    def cell(value: Any) -> str:
        return "\n".join(map(safe, value)) if isinstance(value, list) else safe(value)

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*map(cell, row))
    console.print(table)
