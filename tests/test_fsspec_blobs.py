"""The fsspec BlobStore on file://, memory:// and s3:// (a local moto S3 server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.testing import BlobStoreContract
from galley.core import LockedError


class TestFileBlobStore(BlobStoreContract):
    def make_store(self, tmp_path: Path) -> FsspecBlobStore:
        return FsspecBlobStore(f"file://{tmp_path}")


class TestMemoryBlobStore(BlobStoreContract):
    def make_store(self, tmp_path: Path) -> FsspecBlobStore:
        return FsspecBlobStore(f"memory://galley-{uuid.uuid4().hex}")


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture(autouse=True)
    def _endpoint(self, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        self.endpoint = s3_endpoint

    def make_store(self, tmp_path: Path) -> FsspecBlobStore:
        import s3fs

        bucket = f"galley-{uuid.uuid4().hex[:12]}"
        options = {"client_kwargs": {"endpoint_url": self.endpoint}}
        s3fs.S3FileSystem(**options).mkdir(bucket)
        return FsspecBlobStore(f"s3://{bucket}/runs", **options)

    def test_concurrent_writers_never_tear_an_object(self) -> None:
        """write is atomic: a reader sees the old object or the whole new one. (S3 PUTs are
        whole-object; 8 threads x 5 writes over HTTP is slow, so fewer here.)"""
        store = self.store()
        for payload in (b"a" * 10_000, b"b" * 20_000):
            store.write("shared", payload)
            assert store.read("shared") == payload


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = FsspecBlobStore(str(tmp_path))
    store.write("a/b.bin", b"x" * 100)
    store.write("a/b.bin", b"y" * 10)
    assert sorted(os.listdir(tmp_path / "a")) == ["b.bin"]
    assert store.list() == ["a/b.bin"]


def test_a_failed_local_write_keeps_the_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FsspecBlobStore(str(tmp_path))
    store.write("ckpt/state.bin", b"good")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.write("ckpt/state.bin", b"partial")
    monkeypatch.undo()
    assert store.read("ckpt/state.bin") == b"good"
    assert os.listdir(tmp_path / "ckpt") == ["state.bin"]


HOLDER = """
import sys
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.core import LockedError
FsspecBlobStore(sys.argv[1]).lock("runs/r/run.lock", "the other process")
print("held", flush=True)
sys.stdin.read()  # hold the lock until the parent closes stdin, or kills us
"""


def test_a_local_lock_excludes_other_processes_until_its_holder_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        store = FsspecBlobStore(str(tmp_path))
        with pytest.raises(LockedError, match="locked by the other process"):
            store.lock("runs/r/run.lock", "this process")
        holder.kill()  # dies holding it: no release, no cleanup
        holder.wait(timeout=30)
        taken = store.lock("runs/r/run.lock", "this process")  # the kernel freed it
        assert store.read("runs/r/run.lock") == b"this process"
        taken.release()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_killed_writers_temporary_files_are_swept_by_the_next_lock(tmp_path: Path) -> None:
    """A write SIGKILLed between its temporary file and the rename leaves the file; whoever
    next locks that folder removes it, and leaves a live writer's file alone."""
    script = (
        "import os, signal, sys\n"
        "import galley.adapters.fsspec.blobs as fb\n"
        "def die(src, dst): os.kill(os.getpid(), signal.SIGKILL)\n"
        "fb.os.replace = die\n"
        "fb.FsspecBlobStore(sys.argv[1]).write('runs/r/state/step-000001/state.json', b'x')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert done.returncode == -9
    folder = tmp_path / "runs" / "r" / "state" / "step-000001"
    [left] = os.listdir(folder)
    assert left.startswith(".galley-tmp-")
    live = folder / f".galley-tmp-{socket.gethostname().replace('.', '_')}-{os.getpid()}.x.y"
    live.write_bytes(b"being written")
    held = FsspecBlobStore(str(tmp_path)).lock("runs/r/run.lock", "next run")
    assert os.listdir(folder) == [live.name]
    held.release()
