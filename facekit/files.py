"""Writing files so that a crash, a kill or a full disk never leaves half a file behind.

Every file facekit writes that something later reads (run folders, checkpoints, caches) goes
through :func:`atomic_write`: the data goes to a temporary file beside the target, which is
renamed over it only once it is complete. The temporary names share one pattern
(``.<name>.<random>.tmp``), so :func:`remove_stale_temporaries` can clean up after a process
that was killed mid-write.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

TEMP_SUFFIX = ".tmp"
# What atomic_write's temporaries are called: "." + the target's name + "." + mkstemp's 8 random
# characters + ".tmp". Only names of this shape are ever cleaned up.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
# Open flags that refuse to follow a symbolic link at the last component (0 where unknown).
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function that writes to an open binary file) to ``path`` atomically.

    The temporary file is removed on any failure (a full disk, an interrupt); the previous
    content of ``path``, if any, stays untouched until the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; run folders and caches are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


def remove_stale_temporaries(folder: str | Path, older_than_s: float = 0.0) -> list[Path]:
    """Delete temporary files left in ``folder`` by writers that were killed; returns what was removed.

    Only names made by :func:`atomic_write` are touched. ``older_than_s`` spares files a live
    writer may still be filling (call with 0 only when no other process writes there).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for candidate in folder.glob(f".*{TEMP_SUFFIX}"):
        if not _TEMPORARY.match(candidate.name):
            continue  # a user's own dot-file that happens to end in .tmp
        try:
            info = candidate.lstat()  # a link is never followed: only a file of ours is removed
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= older_than_s:
                candidate.unlink()
                removed.append(candidate)
        except OSError:  # gone already, or not ours to delete: leave it
            continue
    return removed


# What to do about a failed write, by its cause.
_WRITE_FIXES = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some disk space (the disk quota is used up)",
    errno.EFBIG: "the file system refuses files this large; use a folder on another disk",
    errno.EROFS: "use a writable folder",
    errno.EACCES: "check its permissions, or use another folder",
    errno.EPERM: "check its permissions, or use another folder",
}

def os_error_line(exc: OSError, path: str | Path | None = None) -> str:
    """One line for an operating-system error: the file, the cause and, when known, what to do."""
    where = path or exc.filename
    text = f"{where}: {exc.strerror or exc}" if where else str(exc.strerror or exc)
    fix = _WRITE_FIXES.get(exc.errno)
    return f"{text}; {fix}" if fix else text


def write_failure(exc: BaseException) -> OSError | None:
    """The operating-system error behind a failed write, or None when ``exc`` is not one.

    ``torch.save`` reports a failed write (a full disk) as a RuntimeError ("unexpected pos")
    whose context is the OSError; a RuntimeError without one is still a failed write.
    """
    if isinstance(exc, OSError):
        return exc
    if interrupted_write(exc):
        return None  # Ctrl-C while torch wrote: an interruption, not a disk problem
    if isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "PytorchStreamWriter" in str(exc)):
        context = exc.__context__
        if isinstance(context, OSError):
            return context
        return OSError(errno.EIO, "the write did not complete (is the disk full?)")
    return None


def interrupted_write(exc: BaseException) -> bool:
    """Whether ``exc`` is (or was raised while handling) a Ctrl-C: torch.save turns a
    KeyboardInterrupt in its writer into a RuntimeError ("unexpected pos") with the interrupt as context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def is_own_file(path: str | Path, *, folder: bool = False, private: bool = False) -> bool:
    """``path`` is a real file (or folder) of the current user, not a symbolic link to one.

    With ``private``, nobody else may write it either (what a file that is executed needs).
    """
    try:
        info = os.lstat(path)
    except OSError:
        return False
    kind = stat.S_ISDIR if folder else stat.S_ISREG
    if not kind(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        return False
    return not (private and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def protected_reason(target: str | Path, data: Iterable[str | Path] = ()) -> str | None:
    """Why facekit must never empty or delete ``target``, or None.

    Refused: the root of a file system, the home folder, a folder that holds the current one,
    and any folder that is, holds or lies inside one of the ``data`` folders. Paths are compared
    after resolving links, so ``faces/../faces`` or a link to the data are recognised too.
    """
    real = Path(target).expanduser().resolve()
    if real == Path(real.anchor):
        return f"{target} is the root of the file system"
    if real == Path.home().resolve():
        return f"{target} is the home folder"
    if real in Path.cwd().resolve().parents:
        return f"{target} holds the current folder"
    return data_overlap(target, data)


def data_overlap(target: str | Path, data: Iterable[str | Path]) -> str | None:
    """How ``target`` overlaps one of the ``data`` folders (is it, holds it, or lies inside it), or None."""
    real = Path(target).expanduser().resolve()
    for folder in data:
        place = Path(folder).expanduser().resolve()
        if real == place:
            return f"{target} is the data folder"
        if real in place.parents:
            return f"{target} holds the data folder {folder}"
        if place in real.parents:
            return f"{target} is inside the data folder {folder}"
    return None


def describe_contents(folder: Path, shown: int = 3) -> str:
    """``notes.txt, photos/ and 12 more``: a few names of what ``folder`` holds."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    text = ", ".join(names[:shown])
    return f"{text} and {len(names) - shown} more" if len(names) > shown else text
