"""The exclusive lock of a run folder: two trainings never write into one folder.

The lock is the operating system's (``flock``, or ``msvcrt.locking`` on Windows) on
``RUN/.lock``, which holds the owner's pid: the kernel releases it when its process dies, so it
never sticks after a kill.
"""

from __future__ import annotations

import os
from pathlib import Path

from facekit.errors import UsageError
from facekit.files import NOFOLLOW
from facekit.run_files import LOCK_FILE


def try_lock(fd: int) -> bool:
    """Lock an open file exclusively without waiting; False when another process holds it.

    POSIX ``flock``; on Windows a byte far past the pid (locked bytes cannot be read there).
    Either way the operating system drops the lock when its process ends.
    """
    try:
        import fcntl
    except ImportError:
        import msvcrt

        os.lseek(fd, 1 << 20, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_folder(path: Path) -> int:
    """Take the run folder's exclusive lock; the kernel releases it when the process dies, so it never sticks."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o666)
    except OSError as exc:
        if (path / LOCK_FILE).is_symlink():  # ELOOP: writing the pid would overwrite whatever it points to
            raise UsageError(
                f"{path / LOCK_FILE} is a symbolic link, which facekit never writes through: remove it, or choose another --out"
            ) from None
        raise exc
    if not try_lock(fd):
        owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(
            f"run folder {path} is in use by another facekit process (pid {owner}): wait for it to finish, "
            "or choose another --out"
        )
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
