"""Index a data set folder: identities, usable images, bad files; cached by the folder's contents.

Layout: ``ROOT/<identity>/<image>`` (images may sit in nested folders under an identity).
Class ids are the positions of the identity folders in sorted order, counting only identities
that keep at least one usable image: an identity folder whose images are all bad (or that holds
none) is listed in ``empty_classes`` and gets no class id, so every class id has training data.
A folder that cannot be read is a bad entry ("folder unreadable: permission denied"), never
silently skipped.

Each file is indexed once, by its real path: a symbolic link to a folder or file already in the
set (``ln -s . faces/loop``), a link to the data folder or above it, and anything facekit wrote
into the data folder (a run folder, facekit's cache) are left out and listed in ``skipped``,
with the reason. A link to a folder outside the set is followed (its images count once).

Verification also records, per usable file, a sha256 of its bytes (what a run fingerprints, so
a resume notices a replaced image) and of its decoded pixels (identical images, whatever their
encoding: leakage between identities or between split parts, see :mod:`facekit.data.leakage`).

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

from facekit.data.pixels import FORMAT_OF_SUFFIX, READABLE_FORMATS, WIDE_GREY_MODES
from facekit.errors import FacekitError, UsageError
from facekit.files import atomic_write, remove_stale_temporaries
from facekit.run_files import is_report_folder, is_run_folder

IMAGE_EXTENSIONS = frozenset(FORMAT_OF_SUFFIX)

# Bump when the index format or the verification rules change: old cache entries are then ignored.
# 3: file and pixel hashes, notes; files of foreign formats (a GIF named .png) are bad.
_INDEX_VERSION = 3

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
    # Left out on purpose, with the reason: links back into the set, run folders, facekit's cache.
    skipped: list[BadFile] = field(default_factory=list)
    # Usable files worth a word (a JPEG named .png is read by its content).
    notes: list[BadFile] = field(default_factory=list)
    # Per file (by its path in ``files``), when verified: sha256 (hex, 32 digits) of its bytes and of
    # its decoded pixels. Keyed by path, so an index narrowed to some identities stays right.
    file_hashes: dict[str, str] = field(default_factory=dict)
    pixel_hashes: dict[str, str] = field(default_factory=dict)

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
            "notes": [asdict(n) for n in self.notes],
            "file_hashes": dict(self.file_hashes),
            "pixel_hashes": dict(self.pixel_hashes),
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
            notes=[BadFile(**n) for n in data.get("notes", [])],
            file_hashes=dict(data.get("file_hashes", {})),
            pixel_hashes=dict(data.get("pixel_hashes", {})),
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
    names = _identity_folders(root)
    walker = _Walker(root)
    candidates = walker.identities(names)
    identities = list(candidates)
    unreadable, skipped = walker.unreadable, walker.skipped

    key = _cache_key(root, candidates, unreadable, verify)
    cache_file = cache_dir() / "index" / f"{key}.json"
    if cache:
        cached = _read_cache(cache_file, root, candidates, unreadable)
        if cached is not None:
            cached.skipped = skipped
            return cached

    all_files = [rel for name in identities for rel in candidates[name]]
    facts = _verify_all(root, all_files, progress) if verify else {}
    reasons = {rel: fact.problem for rel, fact in facts.items() if fact.problem is not None}

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
        notes=[BadFile(rel, facts[rel].note) for rel in files if verify and facts[rel].note],
        file_hashes={rel: facts[rel].file_hash for rel in files} if verify else {},
        pixel_hashes={rel: facts[rel].pixel_hash for rel in files} if verify else {},
    )
    if cache:
        _write_cache(cache_file, index)
    index.skipped = skipped
    return index


@dataclass(frozen=True)
class ImageFacts:
    """What verifying one file found: why it cannot be used (or None), a note, and its hashes."""

    problem: str | None
    note: str | None = None
    file_hash: str = ""
    pixel_hash: str = ""


def image_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes fully."""
    return inspect_image(path).problem


def inspect_image(path: str | Path) -> ImageFacts:
    """Decode ``path`` fully (as every loader will) and say whether it can be used, and its hashes.

    Refused besides undecodable files: another format under an image name (a GIF named .png:
    DALI cannot read it, torchvision would), and PGM/PPM files of a depth other than 8 or 16
    bits (DALI reads those wrongly). A JPEG named .png and the like decode alike everywhere
    (by content), so they are used, with a note.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    suffix = Path(path).suffix.lower()
    try:
        data = Path(path).read_bytes()
        if not data:
            return ImageFacts("zero-byte file")
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or "image"
            if kind not in READABLE_FORMATS:
                return ImageFacts(f"{kind} image named {suffix}: convert it to PNG or JPEG (DALI cannot read {kind})")
            if kind == "PPM" and _ppm_maxval(data) not in (255, 65535):
                return ImageFacts(
                    f"{_ppm_maxval(data)}-level PGM/PPM: convert it to 8-bit PNG (its depth is read differently by DALI)"
                )
            try:
                image.load()  # decode every pixel: a truncated file fails here, not mid-epoch
                # What the hash of identical images sees: every stored value (16-bit ones too, so
                # two bright 16-bit images never look alike), before the orientation is applied.
                wide = image.mode in WIDE_GREY_MODES
                pixels = image if wide or image.mode == "RGB" else image.convert("RGB")
                shape, raw = (image.size, "wide" if wide else "RGB"), pixels.tobytes()
            except OSError as err:
                if "truncated" in str(err).lower() or "broken data stream" in str(err).lower():
                    return ImageFacts(f"truncated {kind}")
                raise
    except UnidentifiedImageError:
        return ImageFacts("not an image")
    except Exception as err:  # PIL raises assorted errors on malformed files
        return ImageFacts(f"unreadable: {err}")
    note = None
    if FORMAT_OF_SUFFIX.get(suffix) != kind:
        note = f"{kind} data in a {suffix} file (read by its content; rename it to match)"
    pixel_hash = hashlib.sha256(f"{shape}".encode() + raw).hexdigest()[:32]
    return ImageFacts(None, note, hashlib.sha256(data).hexdigest()[:32], pixel_hash)


def _ppm_maxval(data: bytes) -> int:
    """The maxval of a binary PGM/PPM header (255 when it cannot be read: PIL decoded the file)."""
    import re

    found = re.match(rb"P[1-6](?:\s|#[^\n]*\n)+\d+(?:\s|#[^\n]*\n)+\d+(?:\s|#[^\n]*\n)+(\d+)", data[:512])
    return int(found.group(1)) if found else 255


def image_files_under(folder: str | Path) -> tuple[list[Path], list[BadFile]]:
    """Every image file under ``folder`` (sorted, each real file once), as the index finds them:
    hidden files and folders, facekit's run folders and links back into ``folder`` are left out
    (the second list says what and why)."""
    root = Path(folder).resolve()
    walker = _Walker(root)
    found: list[str] = []
    walker.walk(root, found)
    walker.follow_links({"": found})
    return [root / rel for rel in sorted(found)], walker.skipped


SHOWN_SKIPPED = 20  # lines `train` prints about files it leaves out before "and N more"


def skipped_lines(entries: list[BadFile], shown: int = SHOWN_SKIPPED) -> list[str]:
    """What `train` says of the files and folders it leaves out: the first ``shown``, then how many more."""
    lines = [f"skipping {entry.path}: {entry.reason}" for entry in entries[:shown]]
    if len(entries) > shown:
        lines.append(f"skipping {len(entries) - shown} more files or folders (`facekit data check` lists them all)")
    return lines


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


def _facekit_made(folder: Path) -> str | None:
    """Why ``folder`` holds what facekit wrote rather than images of a person, or None."""
    if is_run_folder(folder):
        return "a facekit run folder (left out)"
    if is_report_folder(folder):
        return "a folder of facekit report files (left out)"
    try:
        if folder.resolve() == cache_dir().resolve():
            return "facekit's cache folder (left out)"
    except OSError:
        pass
    return None


class _Walker:
    """Finds the image files under a data folder, each real file once (see the module's rules).

    Real folders are walked first, links afterwards: a link never claims a file before the
    folder it really lives in.
    """

    def __init__(self, root: Path):
        self.root = root
        self.unreadable: list[str] = []
        self.skipped: list[BadFile] = []
        self._files: dict[str, str] = {}  # real path -> the relative path that holds it
        self._folders: dict[str, str] = {}  # real folder -> relative path
        self._links: list[tuple[str, str, bool]] = []  # (owner, relative path, is a folder)

    def _rel(self, path: str | Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def identities(self, names: list[str]) -> dict[str, list[str]]:
        """Each identity's image files (sorted); identities that are wholly left out are dropped."""
        found: dict[str, list[str]] = {}
        for name in names:
            folder = self.root / name
            if folder.is_symlink():
                self._links.append((name, name, True))
                found[name] = []
                continue
            reason = _facekit_made(folder)
            if reason:
                self.skipped.append(BadFile(name + "/", reason))
                continue
            found[name] = []
            self.walk(folder, found[name])
        self.follow_links(found)
        skipped_owners = {b.path.split("/", 1)[0] for b in self.skipped}
        unreadable_owners = {rel.split("/", 1)[0] for rel in self.unreadable}
        # An identity whose every entry was left out (e.g. a "runs" folder of run folders) is none.
        return {
            name: sorted(files)
            for name, files in found.items()
            if files or name not in skipped_owners or name in unreadable_owners
        }

    def walk(self, top: Path, files: list[str]) -> None:
        def on_error(err: OSError) -> None:
            # os.walk skips a folder it cannot list unless told: name it instead of dropping it.
            self.unreadable.append(self._rel(err.filename) + "/")

        for dirpath, dirnames, filenames in os.walk(top, onerror=on_error):
            real = os.path.realpath(dirpath)
            if real in self._folders and dirpath != str(top):
                dirnames[:] = []
                continue
            self._folders.setdefault(real, self._rel(dirpath))
            kept = []
            for name in sorted(dirnames):
                path = Path(dirpath, name)
                if name.startswith("."):
                    continue
                if path.is_symlink():
                    self._links.append((self._owner(path), self._rel(path), True))
                    continue
                reason = _facekit_made(path)
                if reason:
                    self.skipped.append(BadFile(self._rel(path) + "/", reason))
                    continue
                kept.append(name)
            dirnames[:] = kept
            for name in filenames:
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                path = Path(dirpath, name)
                if path.is_symlink():
                    self._links.append((self._owner(path), self._rel(path), False))
                    continue
                self._claim(path, files)

    def _owner(self, path: Path) -> str:
        return self._rel(path).split("/", 1)[0] if len(Path(self._rel(path)).parts) > 1 else ""

    def _claim(self, path: Path, files: list[str]) -> None:
        real, rel = os.path.realpath(path), self._rel(path)
        if not os.path.isfile(real):  # a FIFO or device named x.png would block or never end when read
            self.skipped.append(BadFile(rel, "not a regular file (left out)"))
        elif real in self._files:
            self.skipped.append(BadFile(rel, f"the same file as {self._files[real]} (left out)"))
        else:
            self._files[real] = rel
            files.append(rel)

    def follow_links(self, found: dict[str, list[str]]) -> None:
        """Follow the links met while walking (and those met following them), in sorted order."""
        root = self.root
        while self._links:
            links, self._links = sorted(self._links), []
            for owner, rel, is_folder in links:
                path = root / rel
                target = Path(os.path.realpath(path))
                files = found.setdefault(owner, [])
                if not target.exists():
                    self.skipped.append(BadFile(rel, "a broken symbolic link (left out)"))
                elif not is_folder:
                    self._claim(path, files)
                elif target == root or target in root.parents:
                    self.skipped.append(BadFile(rel + "/", "a link to the data folder or above it: a loop (left out)"))
                elif root in target.parents:
                    where = target.relative_to(root).as_posix()
                    self.skipped.append(BadFile(rel + "/", f"a link to {where}/ inside the data folder (its images count once, there)"))
                elif str(target) in self._folders:
                    self.skipped.append(BadFile(rel + "/", f"a link to a folder already indexed as {self._folders[str(target)]}/ (left out)"))
                else:
                    reason = _facekit_made(target)
                    if reason:
                        self.skipped.append(BadFile(rel + "/", reason))
                    else:
                        self.walk(path, files)


def _cache_key(root: Path, candidates: dict[str, list[str]], unreadable: list[str], verify: bool) -> str:
    digest = hashlib.sha256(f"v{_INDEX_VERSION}\0{root}\0{verify}\n".encode("utf-8", "surrogateescape"))
    digest.update(f"unreadable\0{unreadable}\n".encode("utf-8", "surrogateescape"))
    for name, rels in candidates.items():
        digest.update(f"[{name}]\n".encode("utf-8", "surrogateescape"))
        for rel in rels:
            stat = (root / rel).stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def _verify_all(root: Path, files: list[str], progress: Progress | None) -> dict[str, ImageFacts]:
    facts: dict[str, ImageFacts] = {}
    # PIL releases the GIL while decoding, so threads use both cores without pickling overhead.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for rel, fact in zip(files, pool.map(lambda rel: inspect_image(root / rel), files)):
            facts[rel] = fact
            if progress is not None:
                progress(1)
    return facts


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
    for hashes in (index.file_hashes, index.pixel_hashes):
        if hashes and (set(hashes) != set(index.files) or not all(isinstance(v, str) for v in hashes.values())):
            return False
    # Each file belongs to the identity its label names, and every class keeps training data.
    owners = [rel.split("/", 1)[0] for rel in index.files]
    return owners == [index.classes[label] for label in labels] and set(owners) == set(index.classes)

