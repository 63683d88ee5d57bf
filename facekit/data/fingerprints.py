"""What a run records of each of its images, so that a resume notices one replaced or changed.

``RUN/fingerprints.json`` holds, per file of split.json (same order): its size, its modification
time (ns) and the sha256 of its bytes as the index read them; for open-set runs, ``openset``
holds the same for the unknown people's images (``held_out``: calibration then test files,
under the data root; ``strangers``: the same under ``--strangers``). A resume compares: a different
size is a change; a different time alone (a copied or touched data set) costs reading that file
once, and only different bytes are a change. Runs made before this file existed are resumed as
before (only missing images are refused).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from facekit.errors import FacekitError

VERSION = 1


def record(
    root: str | Path, files: Sequence[str], file_hashes: Mapping[str, str], openset: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The fingerprints of ``files`` (relative to ``root``) as they are now, and of the open-set
    split's unknown images (split.json's ``openset`` entry) when there is one."""
    data: dict[str, Any] = {"version": VERSION, "files": _entries(root, files, file_hashes)}
    groups = _openset_groups(root, openset)
    if groups:
        data["openset"] = {name: _entries(where, names, file_hashes if name == "held_out" else {}) for name, (where, names) in groups.items()}
    return data


def _entries(root: str | Path, files: Sequence[str], file_hashes: Mapping[str, str]) -> list[list[Any]]:
    entries = []
    for rel in files:
        path = Path(root) / rel
        info = os.stat(path)
        digest = file_hashes.get(rel) or hashlib.sha256(path.read_bytes()).hexdigest()[:32]
        entries.append([info.st_size, info.st_mtime_ns, digest])
    return entries


def _openset_groups(root: str | Path, openset: dict[str, Any] | None) -> dict[str, tuple[str | Path, list[str]]]:
    """Split.json's unknown images by group: ``{"held_out": (root, files), "strangers": (root, files)}``."""
    groups = {}
    for name in ("held_out", "strangers"):
        part = (openset or {}).get(name)
        if part:
            groups[name] = (part.get("root", root), list(part["calibration"]) + list(part["test"]))
    return groups


def changes(root: str | Path, files: Sequence[str], recorded: dict[str, Any]) -> list[tuple[str, str]]:
    """``(file, what changed)`` for each of ``files`` that differs from its recorded fingerprint."""
    entries = recorded.get("files") if isinstance(recorded, dict) else None
    if not isinstance(entries, list) or len(entries) != len(files):
        raise ValueError("it does not list one fingerprint per image of split.json")
    found = []
    for rel, entry in zip(files, entries):
        size, mtime, digest = entry
        path = Path(root) / rel
        try:
            info = os.stat(path)
        except OSError:
            found.append((rel, "it is gone"))
            continue
        if info.st_size != size:
            found.append((rel, f"its size changed from {size:,} to {info.st_size:,} bytes"))
        elif info.st_mtime_ns != mtime and digest and hashlib.sha256(path.read_bytes()).hexdigest()[:32] != digest:
            found.append((rel, "its content changed"))
    return found


def check_unchanged(
    run_path: Path, root: str | Path, files: Sequence[str], recorded: dict[str, Any] | None, openset: dict[str, Any] | None = None
) -> None:
    """Refuse (FacekitError, one line naming a file) to continue a run whose images changed."""
    if recorded is None:
        return  # a run from before fingerprints: nothing to compare
    try:
        changed = [(Path(root) / rel, what) for rel, what in changes(root, files, recorded)]
        for name, (where, names) in _openset_groups(root, openset).items():
            kept = (recorded.get("openset") or {}).get(name)
            if kept is not None:
                changed += [(Path(where) / rel, what) for rel, what in changes(where, names, {"files": kept})]
    except (ValueError, TypeError) as err:
        raise FacekitError(f"{Path(run_path) / 'fingerprints.json'} is damaged ({err}): this run cannot be resumed") from None
    if changed:
        path, what = changed[0]
        raise FacekitError(
            f"{len(changed)} {'image' if len(changed) == 1 else 'images'} of {run_path} changed since the run started "
            f"(e.g. {path}: {what}); a resume would train and test on other images: "
            "restore them, or train a new run on the data as it is now"
        )
