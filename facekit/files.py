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
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

TEMP_SUFFIX = ".tmp"


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
        try:
            if candidate.is_file() and now - candidate.stat().st_mtime >= older_than_s:
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
    if isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "PytorchStreamWriter" in str(exc)):
        context = exc.__context__
        if isinstance(context, OSError):
            return context
        return OSError(errno.EIO, "the write did not complete (is the disk full?)")
    return None
