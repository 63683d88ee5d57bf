"""Index a data set folder: identities, usable images, bad files; cached by the folder's contents.

Layout: ``ROOT/<identity>/<image>`` (images may sit in nested folders under an identity).
Class ids are the positions of the identity folders in sorted order, counting only identities
that keep at least one usable image: an identity folder whose images are all bad (or that holds
none) is listed in ``empty_classes`` and gets no class id, so every class id has training data.
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

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp"})

# Bump when the index format or the verification rules change: old cache entries are then ignored.
_INDEX_VERSION = 1

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
    return index


def scan_dataset(
    root: str | Path, *, verify: bool = True, cache: bool = True, progress: Progress | None = None
) -> DatasetIndex:
    """Like :func:`index_dataset`, but an index with no usable image is returned, not raised."""
    root = _check_root(root)
    identities = _identity_folders(root)
    candidates = {name: _image_files(root, root / name) for name in identities}

    key = _cache_key(root, candidates, verify)
    cache_file = cache_dir() / "index" / f"{key}.json"
    if cache and cache_file.is_file():
        try:
            return DatasetIndex.from_dict(json.loads(cache_file.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt below

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
        bad=[BadFile(rel, reasons[rel]) for rel in all_files if rel in reasons],
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
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UsageError(
            f"{root} has no identity sub-folders; expected ROOT/<identity>/<image> "
            "(try `facekit data synth OUT` for an example)"
        )
    return names


def _image_files(root: Path, folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def _cache_key(root: Path, candidates: dict[str, list[str]], verify: bool) -> str:
    digest = hashlib.sha256(f"v{_INDEX_VERSION}\0{root}\0{verify}\n".encode())
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


def _write_cache(cache_file: Path, index: DatasetIndex) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index.to_dict()))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only cache only costs a rescan next time
