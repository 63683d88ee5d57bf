"""Index a data set folder: identities, usable images, bad files; cached by the folder's contents.

Layout: ``ROOT/<identity>/<image>`` (images may sit in nested folders under an identity).
Class ids are the positions of the identity folders in sorted order, counting only identities
that keep at least one usable image: an identity folder whose images are all bad (or that holds
none) is listed in ``empty_classes`` and gets no class id, so every class id has training data.
A folder that cannot be read is a bad entry ("folder unreadable: permission denied"), never
silently skipped.

The index is cached in ``$FACEKIT_CACHE_DIR/index`` under a key made of the folder's file
names, sizes and times. A cache entry is used only when its checksum matches and it describes
exactly the files found now (every path inside the data root, one label per file, each label
the file's own identity); anything else is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facekit.errors import FacekitError, UsageError
from facekit.files import atomic_write, remove_stale_temporaries

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp"})

# Bump when the index format or the verification rules change: old cache entries are then ignored.
_INDEX_VERSION = 2

# Temporaries older than this were left by a killed writer (an index is written in well under a minute).
STALE_TEMPORARY_S = 3600.0
UNREADABLE_FOLDER = "folder unreadable: permission denied"

Progress = Callable[[int], None]  # called with the number of files just processed


@dataclass
class BadFile:
    """A file that cannot be used, and why (``reason`` is one short phrase)."""

    path: str  # relative to the data set root, posix
    reason: str


@dataclass
class DatasetIndex:
    """The usable images of a data set, their class ids, and what was left out."""

    root: Path
    classes: list[str]
    files: list[str]  # relative to root, posix, grouped by class then sorted
    labels: np.ndarray  # int64 class id per file
    bad: list[BadFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes)).astype(np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def paths(self) -> list[str]:
        """Absolute paths of the usable images, in index order."""
        return [str(self.root / name) for name in self.files]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "classes": list(self.classes),
            "files": list(self.files),
            "labels": [int(v) for v in self.labels],
            "bad": [asdict(b) for b in self.bad],
            "empty_classes": list(self.empty_classes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DatasetIndex":
        return cls(
            root=Path(data["root"]),
            classes=list(data["classes"]),
            files=list(data["files"]),
            labels=np.asarray(data["labels"], dtype=np.int64),
            bad=[BadFile(**b) for b in data["bad"]],
            empty_classes=list(data["empty_classes"]),
        )


def cache_dir() -> Path:
    return Path(os.environ.get("FACEKIT_CACHE_DIR", Path.home() / ".cache" / "facekit"))


def index_dataset(
    root: str | Path, *, verify: bool = True, cache: bool = True, progress: Progress | None = None
) -> DatasetIndex:
    """Index ``root``; with ``verify`` every image is decoded once and bad files are left out.

    Raises UsageError when ``root`` is not a data set folder, FacekitError when no usable
    image remains.
    """
    index = scan_dataset(root, verify=verify, cache=cache, progress=progress)
    if not index.files:
        raise FacekitError(
            f"{index.root}: no usable image in any identity folder "
            f"({len(index.bad)} bad files); run `facekit data check {root}` for details"
        )
    if index.num_classes < 2:
        # One class trains to a meaningless accuracy of 1.000: refuse before any work is done.
        raise UsageError(
            f"{index.root}: only one identity ({index.classes[0]}) has usable images; a classifier needs at "
            f"least 2 identity folders (run `facekit data check {root}` for details)"
        )
    return index


def scan_dataset(
    root: str | Path, *, verify: bool = True, cache: bool = True, progress: Progress | None = None
) -> DatasetIndex:
    """Like :func:`index_dataset`, but an index with no usable image is returned, not raised."""
    root = _check_root(root)
    identities = _identity_folders(root)
    unreadable: list[str] = []
    candidates = {name: _image_files(root, root / name, unreadable) for name in identities}

    key = _cache_key(root, candidates, unreadable, verify)
    cache_file = cache_dir() / "index" / f"{key}.json"
    if cache:
        cached = _read_cache(cache_file, root, candidates, unreadable)
        if cached is not None:
            return cached

    all_files = [rel for name in identities for rel in candidates[name]]
    reasons = _verify_all(root, all_files, progress) if verify else {}

    classes: list[str] = []
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for name in identities:
        usable = [rel for rel in candidates[name] if rel not in reasons]
        if not usable:
            empty.append(name)
            continue
        files.extend(usable)
        labels.extend([len(classes)] * len(usable))
        classes.append(name)
    index = DatasetIndex(
        root=root,
        classes=classes,
        files=files,
        labels=np.asarray(labels, dtype=np.int64),
        bad=[BadFile(rel, UNREADABLE_FOLDER) for rel in unreadable]
        + [BadFile(rel, reasons[rel]) for rel in all_files if rel in reasons],
        empty_classes=empty,
    )
    if cache:
        _write_cache(cache_file, index)
    return index


def image_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes fully."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
        with Image.open(path) as image:
            kind = image.format or "image"
            try:
                image.load()  # decode every pixel: a truncated file fails here, not mid-epoch
                image.convert("RGB")
            except OSError as err:
                if "truncated" in str(err).lower() or "broken data stream" in str(err).lower():
                    return f"truncated {kind}"
                raise
    except UnidentifiedImageError:
        return "not an image"
    except Exception as err:  # PIL raises assorted errors on malformed files
        return f"unreadable: {err}"
    return None


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise UsageError(f"data folder {path} does not exist; pass a folder with one sub-folder per identity")
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder; pass a folder with one sub-folder per identity")
    return path.resolve()


def _identity_folders(root: Path) -> list[str]:
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError:
        raise UsageError(f"data folder {root}: permission denied; make it readable (chmod u+rx)") from None
    if not names:
        raise UsageError(
            f"{root} has no identity sub-folders; expected ROOT/<identity>/<image> "
            "(try `facekit data synth OUT` for an example)"
        )
    return names


def _image_files(root: Path, folder: Path, unreadable: list[str]) -> list[str]:
    """Image files under ``folder`` (relative to ``root``); folders that cannot be read go to ``unreadable``."""

    def on_error(err: OSError) -> None:
        # os.walk skips a folder it cannot list unless told: name it instead of dropping it.
        unreadable.append(Path(err.filename).relative_to(root).as_posix() + "/")

    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def _cache_key(root: Path, candidates: dict[str, list[str]], unreadable: list[str], verify: bool) -> str:
    digest = hashlib.sha256(f"v{_INDEX_VERSION}\0{root}\0{verify}\n".encode())
    digest.update(f"unreadable\0{unreadable}\n".encode())
    for name, rels in candidates.items():
        digest.update(f"[{name}]\n".encode())
        for rel in rels:
            stat = (root / rel).stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _verify_all(root: Path, files: list[str], progress: Progress | None) -> dict[str, str]:
    reasons: dict[str, str] = {}
    # PIL releases the GIL while decoding, so threads use both cores without pickling overhead.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for rel, reason in zip(files, pool.map(lambda rel: image_problem(root / rel), files)):
            if reason is not None:
                reasons[rel] = reason
            if progress is not None:
                progress(1)
    return reasons


def _checksum(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _write_cache(cache_file: Path, index: DatasetIndex) -> None:
    payload = index.to_dict()
    try:
        remove_stale_temporaries(cache_file.parent, older_than_s=STALE_TEMPORARY_S)
        atomic_write(cache_file, json.dumps({"sha256": _checksum(payload), "index": payload}).encode())
    except OSError:
        pass  # a read-only or full cache only costs a rescan next time


def _read_cache(
    cache_file: Path, root: Path, candidates: dict[str, list[str]], unreadable: list[str]
) -> DatasetIndex | None:
    """The cached index of ``root`` if it is intact and describes exactly these files, else None."""
    try:
        entry = json.loads(cache_file.read_text())
        payload = entry["index"]
        if entry["sha256"] != _checksum(payload):
            return None
        index = DatasetIndex.from_dict(payload)
        return index if _describes(index, root, candidates, unreadable) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None  # missing, unreadable or damaged: rebuilt by the caller


def _describes(index: DatasetIndex, root: Path, candidates: dict[str, list[str]], unreadable: list[str]) -> bool:
    """``index`` is a consistent index of exactly the folders and files found now under ``root``."""
    labels = index.labels
    if index.root != root or labels.ndim != 1 or len(labels) != len(index.files):
        return False
    if len(labels) and (labels.min() < 0 or labels.max() >= len(index.classes)):
        return False
    if sorted(index.classes + index.empty_classes) != sorted(candidates) or len(set(index.classes)) != len(index.classes):
        return False
    # The very paths found under root now, each once: none absolute, none with '..', none invented.
    listed = [rel for rels in candidates.values() for rel in rels]
    if sorted(index.files + [bad.path for bad in index.bad]) != sorted(listed + unreadable):
        return False
    # Each file belongs to the identity its label names, and every class keeps training data.
    owners = [rel.split("/", 1)[0] for rel in index.files]
    return owners == [index.classes[label] for label in labels] and set(owners) == set(index.classes)

