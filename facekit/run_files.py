"""The names a run folder holds, and how to recognise one: shared by the run writer and the data index.

The index leaves a run folder (or a report folder) found inside a data set out (its plots are no
identity), and ``--force`` empties only a folder recognised here; neither needs the run machinery.
"""

from __future__ import annotations

import json
from pathlib import Path

LOCK_FILE = ".lock"
# The files a run's setup writes (config.json last), in the order they are written.
SETUP_FILES = ("classes.json", "split.json", "normalization.json", "fingerprints.json", "config.json")


def is_run_folder(path: str | Path) -> bool:
    """``path`` is recognisably a facekit run: its config.json and split.json are the ones `facekit train`
    writes, or it holds nothing but the files of a setup that was interrupted (and the run's lock)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    # A few stats first: the data index asks this of every folder of a data set.
    if not any((path / name).is_file() for name in ("split.json", "classes.json", LOCK_FILE)):
        return False
    try:
        config = json.loads((path / "config.json").read_text())
        split = json.loads((path / "split.json").read_text())
        if isinstance(config, dict) and isinstance(split, dict) and {"arch", "data"} <= set(config) and "files" in split:
            return True
    except (OSError, ValueError):
        pass
    partial = set(SETUP_FILES) - {"config.json"}
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    return bool(entries) and all(p.name in partial or p.name == LOCK_FILE or _is_temporary(p) for p in entries)


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file() and not path.is_symlink()


# What `facekit report` writes into its folder (RUN/report/ or --out): any one of these marks it.
REPORT_MARKERS = (
    "report.md", "report.json", "report.csv", "comparison.md", "comparison.json", "comparison.csv", "loss_curves.png",
)  # fmt: skip


def is_report_folder(path: str | Path) -> bool:
    """``path`` holds what `facekit report` writes (its tables or its plots), not photographs."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and any((path / name).is_file() for name in REPORT_MARKERS)
