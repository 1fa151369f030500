"""A BlobStore over any fsspec URL: ``file://``, ``memory://``, ``s3://``, ``gs://``, ...

Writes are atomic: on a local disk the bytes go to a hidden temporary file in the same folder,
are fsynced, then renamed over the key (readers see the old object or the new one); object
stores already publish a PUT whole. Keys never escape the root (``check_key``).

Locks reach as far as the filesystem lets them: on a local disk a lock is an ``flock`` on the
lock file, shared by every process on the machine and released by the kernel when its holder
dies (network filesystems vary: NFS honours flock only in some setups). Every other filesystem
(``memory://``, object stores) gets locks within this process only: S3, GCS and the like have
no lock a dead holder gives up, so there one process per lock key is the caller's to ensure (a
scheduler that runs each run once); a warning says so when such a lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import structlog

from galley.adapters.helpers.locks import ProcessLocks, Release, lock_file
from galley.adapters.helpers.redaction import redact_text
from galley.core.errors import ConfigError, NotFoundError
from galley.core.keys import check_key, check_prefix

TMP_MARK = ".galley-tmp-"
# Who writes a temporary file, in its name: a later writer on this machine can tell a killed
# writer's leftovers (its process is gone) from a live writer's file.
_HOST = socket.gethostname().replace(".", "_")
_WRITER = f"{_HOST}-{os.getpid()}"
# fsspec's memory filesystem is one per process, so its locks are too (per root).
_PROCESS_LOCKS = ProcessLocks()


def open_filesystem(url: str, what: str, **storage_options: Any) -> tuple[Any, str, bool]:
    """The fsspec filesystem of ``url``, its root (no trailing '/') and whether it is a local
    disk. A URL that cannot be a folder of files (an unknown protocol, a missing package, a
    local path through a file or an unwritable folder) is a ConfigError naming it. A local
    root is not made here but by the first write, so a refused command leaves no folder."""
    if re.search(r"://[^/@]*:[^/@]*@", url):
        raise ConfigError(
            f"{what} {redact_text(url)!r} holds a password: fsspec stores take credentials "
            "from storage_options or their usual environment variables (AWS_ACCESS_KEY_ID, "
            "GOOGLE_APPLICATION_CREDENTIALS, ...), never from the URL"
        )
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as e:
        raise ConfigError(f"{what} {url!r} needs a package that is not installed: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what} {url!r} is not a usable fsspec URL: {e}") from None
    root = root.rstrip("/")
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    local = "file" in protocols
    if local:
        problem = _why_not_a_folder(root or "/")
        if problem is not None:
            raise ConfigError(f"{what} {url!r} cannot be a folder here: {problem}")
    return fs, root, local


def _why_not_a_folder(path: str) -> str | None:
    """Why ``path`` cannot be (made) a writable folder, or None: it is one, or its nearest
    existing parent is a folder this process may write in."""
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing!r} is a file"
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing!r} is not writable"
    return None


class FsspecBlobStore:
    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url
        self.fs, self.root, self.local = open_filesystem(url, "blob store", **storage_options)

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            data: bytes = self.fs.cat_file(path)
        except FileNotFoundError:
            raise NotFoundError(f"no blob {key!r} in {self.url!r}") from None
        return data

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = self.fs.open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"no blob {key!r} in {self.url!r}") from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if not self.local:
            self.fs.pipe_file(path, bytes(data))
            self.fs.invalidate_cache()
            return
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{TMP_MARK}{_WRITER}.{uuid.uuid4().hex}.{name}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        base = f"{self.root}/{prefix.rstrip('/')}" if prefix else self.root
        if not self.fs.exists(base) or self.fs.isfile(base):
            return []
        start = len(self.root) + 1
        keys = []
        for path in self.fs.find(base):
            key = (
                path[start:]
                if path.startswith(self.root)
                else path.split(self.root.lstrip("/") + "/", 1)[-1]
            )
            if TMP_MARK not in key.rsplit("/", 1)[-1]:
                keys.append(key)
        return sorted(keys)

    def lock(self, key: str, owner: str) -> Release:
        """On a local disk, taking the lock also sweeps its folder of the temporary files that
        writers of this machine killed mid-write left behind."""
        path = self._path(key)
        if self.local:
            made = _missing_folders(os.path.dirname(path))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                held = lock_file(path, key, owner)
            except BaseException:
                _remove_if_empty(made)
                raise
            _sweep_dead_writers(os.path.dirname(path))

            def release_and_tidy() -> None:  # a run refused after its claim leaves no folder
                try:
                    held.release()
                finally:
                    _remove_if_empty(made)

            return Release(release_and_tidy)
        held = _PROCESS_LOCKS.take(key, owner, scope=f"{self.fs.protocol}:{self.root}")
        if "memory" not in self.fs.protocol:
            structlog.get_logger("galley").warning(
                "blobs.lock.process_only",
                key=key,
                note="this store cannot lock across processes: run each lock key once",
            )
        try:
            self.write(key, owner.encode())
        except BaseException:
            held.release()
            raise

        def release() -> None:
            try:
                self.delete(key)
            finally:
                held.release()

        return Release(release)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.isfile(path):
            self.fs.rm_file(path)
            self.fs.invalidate_cache()
            folder = os.path.dirname(path)
            if self.local and folder != self.root:  # a key's folder dies with its last key
                with contextlib.suppress(OSError):  # not empty: other keys live there
                    os.rmdir(folder)


def _missing_folders(folder: str) -> list[str]:
    """The folders of ``folder``'s path that do not exist yet, deepest first."""
    missing = []
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def _remove_if_empty(folders: list[str]) -> None:
    """Remove the folders (deepest first) that are still empty: those a lock made and nothing
    else wrote into."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (or gone): it and its parents stay
            return


def _sweep_dead_writers(folder: str) -> None:
    """Remove the temporary files under ``folder`` whose writer ran on this machine and has
    exited (a write killed between its temporary file and the rename)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            if not name.startswith(TMP_MARK):
                continue
            host, _, pid = name[len(TMP_MARK) :].split(".", 1)[0].rpartition("-")
            if host == _HOST and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(parent, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
