"""BlobStore: named bytes (checkpoints, exported weights, indexes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable


@runtime_checkable
class BlobLock(Protocol):
    """An exclusive lock held through a BlobStore; ``release`` removes its key and gives it
    up (calling it again does nothing)."""

    def release(self) -> None: ...


@runtime_checkable
class BlobStore(Protocol):
    """Keys are '/'-separated relative paths (``galley.core.keys.check_key``); a key that is
    absolute or contains '..' is refused with ``ValidationError`` before any I/O.
    Missing keys raise ``NotFoundError`` naming the key. Safe to use from several threads."""

    def read(self, key: str) -> bytes:
        """The whole object, as last completely written."""
        ...

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object in chunks, for objects too large to hold twice in memory."""
        ...

    def write(self, key: str, data: bytes) -> None:
        """Atomic: a reader sees the old object or the whole new one, never a part; a failed
        write leaves the old object (or no object) in place."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a complete object is stored under ``key``."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys under ``prefix`` (a folder-like prefix: 'a/b' lists 'a/b/...')."""
        ...

    def delete(self, key: str) -> None:
        """Remove one object; deleting a missing key is not an error."""
        ...

    def lock(self, key: str, owner: str) -> BlobLock:
        """Take the exclusive lock named ``key`` and write ``owner`` (who holds it, as text)
        to that key; while held, another ``lock`` of the key (from any process this store
        can coordinate) raises ``LockedError`` whose ``holder`` is that text. A holder that
        died without releasing loses the lock: the next ``lock`` takes it over. Each adapter
        documents how far its locks reach (a local file lock, one process, ...)."""
        ...
