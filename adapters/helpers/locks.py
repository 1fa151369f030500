"""Locks for BlobStore adapters: within one process, and across processes on a local disk.

An in-memory store lives and dies with its process, so a lock table in that process is exact;
a local disk is shared by processes, so there the lock is the operating system's: ``flock`` on
the lock file, which the kernel releases when its holder dies (a killed run's lock is free for
whoever comes next; the file it leaves names it, until the next holder rewrites it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable

from galley.core.errors import LockedError

UNKNOWN_HOLDER = "an unknown holder (its lock file is being written)"


class Release:
    """A held lock; ``release`` runs its undo once, however often it is called."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo: Callable[[], None] | None = undo
        self._guard = threading.Lock()

    def release(self) -> None:
        with self._guard:
            undo, self._undo = self._undo, None
        if undo is not None:
            undo()


class ProcessLocks:
    """Exclusive locks by key among the threads of this process; ``scope`` tells apart the
    stores that share one table (each root of a process-wide filesystem)."""

    def __init__(self) -> None:
        self._holders: dict[tuple[str, str], str] = {}
        self._guard = threading.Lock()

    def take(self, key: str, owner: str, scope: str = "") -> Release:
        slot = (scope, key)
        with self._guard:
            if slot in self._holders:
                raise LockedError(key, self._holders[slot])
            self._holders[slot] = owner

        def undo() -> None:
            with self._guard:
                self._holders.pop(slot, None)

        return Release(undo)


def lock_file(path: str, key: str, owner: str) -> Release:
    """``flock`` the file at ``path`` (created if missing) and write ``owner`` into it; the
    release removes the file, then unlocks. Two opens in one process exclude each other as
    well (flock belongs to the open file)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or UNKNOWN_HOLDER
            os.close(fd)
            raise LockedError(key, holder) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # its last holder removed it between our open and our flock: again
    os.ftruncate(fd, 0)
    os.pwrite(fd, owner.encode(), 0)
    os.fsync(fd)

    def undo() -> None:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still held: whoever opens the path next gets a new file
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    return Release(undo)


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
