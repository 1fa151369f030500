"""The BlobStore contract. Subclass it and define ``make_store(tmp_path)``::

class TestMyStore(BlobStoreContract):
    def make_store(self, tmp_path):
        return MyStore(root=tmp_path)
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from galley.adapters.testing.contract import Contract
from galley.core import LockedError, NotFoundError, ValidationError
from galley.ports import BlobStore


class BlobStoreContract(Contract):
    port = "BlobStore"

    def make_store(self, tmp_path: Path) -> BlobStore:
        """A new, empty store (``tmp_path`` is a fresh folder it may keep its objects in)."""
        raise NotImplementedError

    def store(self) -> BlobStore:
        return self.make_store(self.fresh_folder())

    def test_implements_the_port(self) -> None:
        """It has every method of the port (read, stream, write, exists, list, delete, lock)."""
        assert isinstance(self.store(), BlobStore)

    def test_read_gives_what_was_written(self) -> None:
        """read: the whole object, as last completely written; exists: whether a complete
        object is stored under the key."""
        store = self.store()
        assert not store.exists("a/b.bin")
        store.write("a/b.bin", b"\x00hello")
        assert store.exists("a/b.bin")
        assert store.read("a/b.bin") == b"\x00hello"

    def test_list_gives_every_key_under_a_prefix_sorted(self) -> None:
        """list: sorted keys under the prefix (a folder-like prefix: 'a/b' lists 'a/b/...')."""
        store = self.store()
        for key in ("a/c/d.json", "ab/x", "a/b.bin", "a/a"):
            store.write(key, b"{}")
        assert store.list("a") == ["a/a", "a/b.bin", "a/c/d.json"]
        assert store.list("a/") == ["a/a", "a/b.bin", "a/c/d.json"]
        assert store.list("") == ["a/a", "a/b.bin", "a/c/d.json", "ab/x"]
        assert store.list("none") == []

    def test_delete_removes_one_object(self) -> None:
        """delete: remove one object; deleting a missing key is not an error."""
        store = self.store()
        store.write("a/b.bin", b"x")
        store.write("a/c", b"y")
        store.delete("a/b.bin")
        store.delete("a/b.bin")
        assert not store.exists("a/b.bin")
        assert store.list("a") == ["a/c"]

    def test_overwrite_replaces_whole_object(self) -> None:
        """write: a reader sees the old object or the whole new one, never a part."""
        store = self.store()
        store.write("k", b"x" * 1000)
        store.write("k", b"short")
        assert store.read("k") == b"short"

    def test_stream_yields_the_object_in_chunks(self) -> None:
        """stream: the object in chunks of at most chunk_size bytes."""
        store = self.store()
        data = bytes(range(256)) * 40
        store.write("big", data)
        chunks = list(store.stream("big", chunk_size=1000))
        assert b"".join(chunks) == data
        assert max(len(c) for c in chunks) <= 1000 and len(chunks) >= 11

    def test_missing_key_names_it(self) -> None:
        """Missing keys raise NotFoundError naming the key."""
        with pytest.raises(NotFoundError, match="nope/x"):
            self.store().read("nope/x")

    @pytest.mark.parametrize(
        "key", ["../escape", "/abs/path", "a/../b", "a//b", "", "a/./b", "C:/x", "s3://b/k", "a\\b"]
    )
    def test_keys_escaping_the_root_are_refused(self, key: str) -> None:
        """A key that is absolute or contains '..' is refused with ValidationError before any
        I/O."""
        store = self.store()
        for call in (
            lambda: store.write(key, b"x"),
            lambda: store.read(key),
            lambda: store.exists(key),
        ):
            with pytest.raises(ValidationError, match="key"):
                call()

    def test_concurrent_writers_never_tear_an_object(self) -> None:
        """write is atomic and the store is safe to use from several threads: a reader sees
        the old object or the whole new one, never a part."""
        store = self.store()
        payloads = [bytes([i]) * 50_000 for i in range(8)]

        def write(p: bytes) -> None:
            for _ in range(5):
                store.write("shared", p)

        threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
        for t in threads:
            t.start()
        seen = set()
        while any(t.is_alive() for t in threads):
            if store.exists("shared"):
                seen.add(store.read("shared"))
        for t in threads:
            t.join()
        seen.add(store.read("shared"))
        assert seen <= set(payloads)

    def test_a_lock_is_exclusive_until_released(self) -> None:
        """lock: while held, another lock of the key raises LockedError whose holder is the
        owner text; release removes its key and gives it up (calling it again does nothing)."""
        store = self.store()
        held = store.lock("runs/r/run.lock", "holder one")
        assert store.read("runs/r/run.lock") == b"holder one"
        with pytest.raises(LockedError, match="'runs/r/run.lock' is locked by holder one") as info:
            store.lock("runs/r/run.lock", "holder two")
        assert info.value.holder == "holder one"
        other = store.lock("runs/other/run.lock", "holder three")  # another key is free
        held.release()
        held.release()  # releasing twice is harmless
        assert not store.exists("runs/r/run.lock")  # nothing left behind
        again = store.lock("runs/r/run.lock", "holder two")
        assert store.read("runs/r/run.lock") == b"holder two"
        with pytest.raises(LockedError, match="holder two"):
            store.lock("runs/r/run.lock", "holder one")
        again.release()
        other.release()

    def test_lock_keys_escaping_the_root_are_refused(self) -> None:
        """A lock's key is checked like any key: one escaping the root is refused."""
        with pytest.raises(ValidationError, match="key"):
            self.store().lock("../run.lock", "me")
