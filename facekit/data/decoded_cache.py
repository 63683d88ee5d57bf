"""The decoded-image cache: where decoded, resized uint8 images are kept after their first decode.

A loader decodes every image once and keeps the ``(3, S, S)`` uint8 result, ``N * 3 * S * S``
bytes in all (494k CASIA-WebFace images at 224 px: 74 GB). :func:`choose_cache` says where
that goes: the training device's memory, host RAM, or a :class:`DiskImageCache` when neither
has room, so a big data set never crashes a run or makes the machine swap.

The disk cache is one memory-mapped file under ``cache_dir()/decoded/<key>/``, written once and
shared by every later run and every data-parallel rank that reads the same images at the same
input size through the same decoder:

- ``manifest.json``: the format, the shape and the key; written last when the files are created
  (atomically), so a folder without a valid manifest is rebuilt.
- ``images.u8``: ``N * 3 * S * S`` bytes, row ``i`` the decoded image of file ``i``. Created sparse,
  after checking the free space.
- ``checks.u32``: the CRC-32 of each written row, so bytes damaged on disk (a flipped bit, a
  file edited in place) are found: each process checks an entry the first time it reads it,
  and an entry that fails is decoded and written again (with a warning saying so).
- ``state.u8``: one byte per image: 0 missing, 1 written, 2 undecodable (stays skipped). A
  byte is set only after that image's bytes and checksum are on disk (``fdatasync``), so a
  crash at any point never leaves an entry marked written with bytes that are not.
- ``complete``: written once every entry is written or undecodable.

Nothing is ever written through a symbolic link: a cache folder, file or lock that is a link
is replaced (the link, never what it points to), as the native-kernel cache refuses links.

Any number of processes fill it at once without a lock per image: each writes the images it
decodes, and two processes that decode the same file write the same bytes. A file lock
(``fcntl.flock``) serializes only creating and checking the folder.

**The key** identifies the images by content, not by path, so a copied data set reuses its
cache: per file, its size and the sha256 of its first and last 64 KiB (the whole file for
anything up to 128 KiB, which covers nearly every face image). Hashing the full bytes of a
multi-gigabyte set before every run would cost minutes; the head and tail, with the size,
change with any re-encode, crop or replacement. Reading them once per data set location is
still a pass over every file, so the resulting digest is memoized under the files' paths,
sizes and modification times (``decoded/fingerprints/``): a later run only stats the files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from facekit.config import CACHE_CHOICES, cache_choice  # noqa: F401 -- CACHE_CHOICES: also read from here
from facekit.data.index import cache_dir
from facekit.errors import FacekitError, UsageError
from facekit.files import NOFOLLOW, atomic_write, write_json

# Bump when the file layout or the key changes: old cache folders are then simply not found.
# 2: checks.u32 (a CRC-32 per entry).
FORMAT_VERSION = 2

MISSING, WRITTEN, UNDECODABLE = 0, 1, 2
# Share of free device memory (or available RAM) a memory cache may take: the rest stays for
# the model, its activations and optimizer state (or the other processes on the machine).
MEMORY_SHARE = 0.5
# Room a disk cache leaves free on its file system beyond its own size.
DISK_MARGIN_BYTES = 1 << 30
# Written images are flushed and marked in the state file at least this often.
_COMMIT_BYTES = 256 << 20
_HASHED_BYTES = 64 << 10  # hashed at each end of a file
_HASH_THREADS = 8  # reading is I/O-bound: more threads than cores keep the disk busy

Progress = Callable[[int], None]  # called with the number of files just hashed

# File locks (fcntl) and positioned writes are POSIX; elsewhere only the memory caches exist.
DISK_CACHE_WORKS = os.name == "posix"
_flush = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def cache_bytes(num_images: int, input_size: int) -> int:
    """Bytes of the decoded images: ``num_images * 3 * input_size**2``."""
    return num_images * 3 * input_size * input_size


def format_bytes(size: float) -> str:
    """``74.4 GB`` or ``40.8 MB``: how cache sizes are shown."""
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


# ----------------------------------------------------------------------------- the policy
def available_memory(device) -> int | None:
    """Bytes free for a new allocation on ``device`` (a torch.device or its name), or None when unknown.

    CUDA: the driver's free memory plus what torch's allocator holds unused (freed tensors it
    keeps for reuse). CPU: ``MemAvailable`` from /proc/meminfo (what can be allocated without
    swapping), else the free physical pages.
    """
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + unused
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _fits(size: int, free: int | None, copies: int = 1) -> bool:
    return free is not None and size * copies <= free * MEMORY_SHARE


def choose_cache(num_images: int, input_size: int, device, requested: str | bool) -> str:
    """Where the decoded images of a loader go: "device", "ram", "disk" or "off".

    ``requested`` is a ``--cache`` value as :class:`facekit.config.TrainConfig` checked it (True and
    False, the flag of earlier versions, are "auto" and "off"):

    - ``auto``: the device's memory when the images take at most half of what is free there,
      else host RAM on the same terms (a CUDA run copies each batch over), else the disk cache
      when its file system has room, else no cache.
    - ``memory``: the device's memory, else host RAM; a UsageError when neither has room.
    - ``disk``: the disk cache (:meth:`DiskImageCache.open` checks the free space).
    - ``off``: decode every epoch.

    Processes started by ``torchrun`` on one machine each keep their own RAM copy
    (``LOCAL_WORLD_SIZE``), and the RAM check counts them all; the disk cache is one copy for
    all of them (the page cache shares it).
    """
    choice = cache_choice(requested)  # the spelling only: the value was checked with the run's settings
    if choice in ("off", "disk") or num_images == 0:
        return "off" if num_images == 0 else choice
    size = cache_bytes(num_images, input_size)
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda" and _fits(size, available_memory(device)):
        return "device"
    ram = available_memory("cpu")
    if _fits(size, ram, copies=int(os.environ.get("LOCAL_WORLD_SIZE", "1"))):
        return "ram"
    if choice == "memory":
        where = f"{device} and host RAM" if kind == "cuda" else "RAM"
        raise UsageError(
            f"--cache memory: {num_images:,} decoded images at {input_size} px take {format_bytes(size)}, "
            f"more than half of the free memory of {where} ({format_bytes(ram or 0)} of RAM available); "
            "use --cache disk (or auto)"
        )
    if DISK_CACHE_WORKS and size + DISK_MARGIN_BYTES <= free_disk_bytes(cache_dir() / "decoded"):
        return "disk"
    return "off"


# ----------------------------------------------------------------------------- the key
def _file_identity(path: str) -> bytes:
    """Size and sha256 of the first and last 64 KiB of a file (all of it up to 128 KiB)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest = hashlib.sha256(size.to_bytes(8, "little"))
        digest.update(handle.read(_HASHED_BYTES))
        if size > _HASHED_BYTES:
            handle.seek(max(_HASHED_BYTES, size - _HASHED_BYTES))
            digest.update(handle.read(_HASHED_BYTES))
    return digest.digest()


def _content_digest(files: Sequence[str], progress: Progress | None) -> str:
    digest = hashlib.sha256(f"facekit decoded images v{FORMAT_VERSION}\n{len(files)}\n".encode())
    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        for identity in pool.map(_file_identity, files):
            digest.update(identity)
            if progress is not None:
                progress(1)
    return digest.hexdigest()


def _stat_fingerprint(files: Sequence[str]) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}\n".encode())
    for path in files:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def cache_key(files: Sequence[str | Path], input_size: int, decoder: str, progress: Progress | None = None) -> str:
    """The disk cache's key: the files' contents in order, the input size and the decoder.

    ``decoder`` names what produced the bytes (backends resize with slightly different filters),
    so a cache never mixes them. The content digest is memoized by the files' paths, sizes and
    modification times; only the first process to see a data set location reads the files,
    the others wait for its result.
    """
    files = [str(f) for f in files]
    try:
        memo = cache_dir() / "decoded" / "fingerprints" / _stat_fingerprint(files)
        with _locked(memo.with_suffix(".lock")):
            try:
                content = memo.read_text().strip()
                int(content, 16)
            except (OSError, ValueError):
                content = _content_digest(files, progress)
                atomic_write(memo, content.encode())
    except OSError as err:
        if str(err.filename or "").startswith(str(cache_dir())):
            raise FacekitError(f"{err.filename}: {err.strerror}; set FACEKIT_CACHE_DIR to a writable folder or use --cache off") from None
        raise FacekitError(f"{err.filename}: cannot read it ({err.strerror}); run `facekit data check`") from None
    return hashlib.sha256(f"{content}\0{input_size}\0{decoder}".encode()).hexdigest()[:32]


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock between processes (released when the process dies, too)."""
    if not DISK_CACHE_WORKS:
        raise FacekitError("the disk cache needs POSIX file locks, which this system lacks; use --cache memory or off")
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    if lock_file.is_symlink():
        lock_file.unlink()  # the link only: locking must not create or open what it points to
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ----------------------------------------------------------------------------- the disk cache
class DiskImageCache:
    """Decoded uint8 images ``(N, 3, S, S)`` in a memory-mapped file shared by runs and ranks.

    Open with :meth:`open`. Read :attr:`images` (a read-only map of the file: rows whose
    :attr:`state` is not WRITTEN hold zeros) and :attr:`state`; add decoded images with
    :meth:`put` and undecodable files with :meth:`put_undecodable`, then :meth:`commit` (or
    :meth:`close`) to flush them and mark them for everyone.
    """

    def __init__(self, folder: Path, num_images: int, input_size: int, notes: list[str]):
        self.folder = folder
        self.num_images = num_images
        self.input_size = input_size
        self.notes = notes  # what opening found and did (a damaged cache rebuilt), for the run's log
        self.shape = (num_images, 3, input_size, input_size)
        self.row_bytes = 3 * input_size * input_size
        self._fd: int | None = os.open(folder / "images.u8", os.O_RDWR | NOFOLLOW)
        # A shared read-only map: it sees every writer's images as they land, and is not charged
        # against the memory limit (a private writable map of 74 GB can be refused by the kernel).
        self.images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=self.shape)
        self.state = np.memmap(folder / "state.u8", dtype=np.uint8, mode="r+", shape=(num_images,))
        self.checks = np.memmap(folder / "checks.u32", dtype="<u4", mode="r+", shape=(num_images,))
        # Entries this process has found intact (see verify): each is checked once per process.
        self._verified = _VERIFIED.setdefault((str(folder), _identity(folder / "images.u8")), np.zeros(num_images, dtype=bool))
        self._pending: list[np.ndarray] = []
        self._pending_bytes = 0
        self._undecodable: list[np.ndarray] = []
        self._complete = (folder / "complete").is_file()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls, files: Sequence[str | Path], input_size: int, *, decoder: str, progress: Progress | None = None
    ) -> "DiskImageCache":
        """The cache for ``files`` at ``input_size`` decoded by ``decoder``; created when new, rebuilt when damaged.

        Raises FacekitError when a new cache does not fit on its file system (``FACEKIT_CACHE_DIR``
        moves it).
        """
        key = cache_key(files, input_size, decoder, progress)
        return cls.open_folder(cache_dir() / "decoded" / key, len(files), input_size, key=key)

    @classmethod
    def open_folder(cls, folder: Path, num_images: int, input_size: int, *, key: str) -> "DiskImageCache":
        """Open (or create, or rebuild) the cache in ``folder``; :meth:`open` finds the folder from the files."""
        manifest = {
            "format": FORMAT_VERSION,
            "key": key,
            "num_images": num_images,
            "input_size": input_size,
            "layout": "uint8 N x 3 x S x S, row-major",
        }
        notes: list[str] = []
        if folder.is_symlink():  # its files would be written wherever it points: replaced by a real folder
            notes.append(f"decoded-image cache at {folder}: the folder is a symbolic link; rebuilding it")
            folder.unlink()
        with _locked(folder / ".lock"):
            problem = _damage(folder, manifest)
            if problem is not None:
                if problem != "new":
                    notes.append(f"decoded-image cache at {folder}: {problem}; rebuilding it")
                _create(folder, manifest)
        return cls(folder, num_images, input_size, notes)

    # -- reading ---------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Every entry is written or undecodable (as of the last :meth:`commit` of any process)."""
        if not self._complete and (self.folder / "complete").is_file():
            self._complete = True
        return self._complete

    @property
    def nbytes(self) -> int:
        return cache_bytes(self.num_images, self.input_size)

    def describe(self) -> str:
        """``disk, 12.3 GB at FOLDER`` (what a run's log and config say)."""
        return f"disk, {format_bytes(self.nbytes)} at {self.folder}"

    def verify(self, rows: np.ndarray) -> np.ndarray:
        """Check the written entries among ``rows`` not yet checked by this process against their CRC-32.

        An entry that fails is marked missing (so it is decoded and written again) and returned;
        the caller says so. Checking reads each entry once per process: the first epoch's reads.
        """
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        rows = rows[(self.state[rows] == WRITTEN) & ~self._verified[rows]]
        flat = self.images.reshape(self.num_images, self.row_bytes)
        damaged = [row for row in rows.tolist() if zlib.crc32(flat[row]) != int(self.checks[row])]
        self._verified[rows] = True
        if damaged:
            bad = np.asarray(damaged, dtype=np.int64)
            self._verified[bad] = False
            self.state[bad] = MISSING
            self.state.flush()
            self._complete = False
            (self.folder / "complete").unlink(missing_ok=True)
            return bad
        return np.zeros(0, dtype=np.int64)

    # -- writing ---------------------------------------------------------------------------
    def put(self, rows: np.ndarray, images: np.ndarray) -> None:
        """Write decoded ``images`` (uint8 ``(n, 3, S, S)``) to ``rows``; marked once committed.

        Writing is best effort: when the disk fills up (or the file went away), the cache stops
        taking images with a warning and training goes on decoding what is missing.
        """
        if self._fd is None:
            return
        rows = np.asarray(rows, dtype=np.int64)
        images = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(rows), self.row_bytes)
        try:
            for row, image in zip(rows.tolist(), images):
                os.pwrite(self._fd, image, row * self.row_bytes)
                self.checks[row] = zlib.crc32(image)
        except OSError as err:
            self._stop_writing(err)
            return
        self._pending.append(rows)
        self._pending_bytes += len(rows) * self.row_bytes
        if self._pending_bytes >= _COMMIT_BYTES:
            self.commit()

    def put_undecodable(self, rows: np.ndarray) -> None:
        """Mark ``rows`` as files that do not decode: every reader skips them."""
        self._undecodable.append(np.asarray(rows, dtype=np.int64))

    def commit(self) -> None:
        """Flush the written images to disk, then mark them (and the undecodable ones) for every reader."""
        if self._fd is None:
            return
        try:
            if self._pending:
                _flush(self._fd)  # the bytes first: a mark must never point at unwritten data
                self.checks.flush()
                written = np.concatenate(self._pending)
                self.state[written] = WRITTEN
                self._verified[written] = True
            if self._undecodable:
                self.state[np.concatenate(self._undecodable)] = UNDECODABLE
            self.state.flush()
        except OSError as err:
            self._stop_writing(err)
            return
        finally:
            self._pending, self._pending_bytes, self._undecodable = [], 0, []
        if not self._complete and bool(self.state.all()):
            atomic_write(self.folder / "complete", b"every entry is written or undecodable\n")
            self._complete = True

    def close(self) -> None:
        """Commit what was written and release the file."""
        self.commit()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DiskImageCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stop_writing(self, err: OSError) -> None:
        reason = "the disk is full" if err.errno == errno.ENOSPC else str(err)
        warnings.warn(
            f"decoded-image cache at {self.folder}: cannot write ({reason}); images it lacks are decoded every epoch",
            RuntimeWarning,
            stacklevel=3,
        )
        os.close(self._fd)
        self._fd = None
        self._pending, self._pending_bytes, self._undecodable = [], 0, []


def _damage(folder: Path, manifest: dict) -> str | None:
    """Why ``folder`` does not hold a usable cache described by ``manifest`` ("new" when empty), or None."""
    for name in ("manifest.json", "images.u8", "state.u8", "checks.u32", "complete"):
        if (folder / name).is_symlink():
            return f"{name} is a symbolic link, which facekit never writes through"
    try:
        found = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return "new"
    except (OSError, ValueError):
        return "unreadable manifest.json"
    if found != manifest:
        return "manifest.json does not match"
    expected = {
        "images.u8": cache_bytes(manifest["num_images"], manifest["input_size"]),
        "state.u8": manifest["num_images"],
        "checks.u32": 4 * manifest["num_images"],
    }
    for name, size in expected.items():
        try:
            info = (folder / name).lstat()
            actual = info.st_size
            if not stat.S_ISREG(info.st_mode):
                return f"{name} is not a plain file"
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual:,} bytes, not {size:,} (truncated?)"
    if int(np.memmap(folder / "state.u8", dtype=np.uint8, mode="r").max()) > UNDECODABLE:
        return "state.u8 holds values that are not entry states"
    return None


def _create(folder: Path, manifest: dict) -> None:
    """New empty cache files in ``folder`` (under its lock), after checking the free space.

    Old files are replaced by renaming, never truncated in place: a process that still maps
    them keeps its own copy instead of crashing on a shrunken mapping.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # a crash below leaves a folder that is rebuilt
    (folder / "complete").unlink(missing_ok=True)
    size = cache_bytes(manifest["num_images"], manifest["input_size"])
    reclaimed = sum(_allocated(folder / name) for name in ("images.u8", "state.u8", "checks.u32"))
    free = free_disk_bytes(folder) + reclaimed
    needed = size + 5 * manifest["num_images"]
    if needed + DISK_MARGIN_BYTES > free:
        raise FacekitError(
            f"the decoded-image cache needs {format_bytes(needed)} at {folder} but that disk has "
            f"{format_bytes(free)} free; free some space, set FACEKIT_CACHE_DIR to a bigger disk, "
            "or use --cache off"
        )
    atomic_write(folder / "images.u8", lambda handle: handle.truncate(size))  # sparse: no bytes written
    atomic_write(folder / "state.u8", bytes(manifest["num_images"]))
    atomic_write(folder / "checks.u32", bytes(4 * manifest["num_images"]))
    write_json(folder / "manifest.json", manifest)


def _identity(path: Path) -> tuple[int, int]:
    """Which file ``path`` is (device, inode): a rebuilt cache is a new file, checked anew."""
    try:
        info = path.stat()
    except OSError:
        return (0, 0)
    return (info.st_dev, info.st_ino)


# (folder, images.u8's identity) -> which entries this process has found intact.
_VERIFIED: dict[tuple[str, tuple[int, int]], np.ndarray] = {}


def _allocated(path: Path) -> int:
    try:
        return path.lstat().st_blocks * 512
    except OSError:
        return 0
