"""The BlobStore contract: every BlobStore adapter passes these (subclass and define make)."""

from __future__ import annotations

import threading

import pytest

from galley.core import LockedError, NotFoundError, ValidationError
from galley.ports import BlobStore


class BlobStoreContract:
    def make(self) -> BlobStore:
        raise NotImplementedError

    def test_implements_the_port(self) -> None:
        assert isinstance(self.make(), BlobStore)

    def test_write_then_read_exists_list_delete(self) -> None:
        store = self.make()
        assert not store.exists("a/b.bin")
        store.write("a/b.bin", b"\x00hello")
        store.write("a/c/d.json", b"{}")
        store.write("ab/x", b"other folder")
        assert store.exists("a/b.bin")
        assert store.read("a/b.bin") == b"\x00hello"
        assert store.list("a") == ["a/b.bin", "a/c/d.json"]
        assert store.list("a/") == ["a/b.bin", "a/c/d.json"]
        assert store.list("") == ["a/b.bin", "a/c/d.json", "ab/x"]
        store.delete("a/b.bin")
        store.delete("a/b.bin")  # deleting a missing key is fine
        assert not store.exists("a/b.bin")
        assert store.list("a") == ["a/c/d.json"]

    def test_overwrite_replaces_whole_object(self) -> None:
        store = self.make()
        store.write("k", b"x" * 1000)
        store.write("k", b"short")
        assert store.read("k") == b"short"

    def test_stream_yields_the_object_in_chunks(self) -> None:
        store = self.make()
        data = bytes(range(256)) * 40
        store.write("big", data)
        chunks = list(store.stream("big", chunk_size=1000))
        assert b"".join(chunks) == data
        assert max(len(c) for c in chunks) <= 1000 and len(chunks) >= 11

    def test_missing_key_names_it(self) -> None:
        with pytest.raises(NotFoundError, match="nope/x"):
            self.make().read("nope/x")

    @pytest.mark.parametrize(
        "key", ["../escape", "/abs/path", "a/../b", "a//b", "", "a/./b", "C:/x", "s3://b/k", "a\\b"]
    )
    def test_keys_escaping_the_root_are_refused(self, key: str) -> None:
        store = self.make()
        for call in (
            lambda: store.write(key, b"x"),
            lambda: store.read(key),
            lambda: store.exists(key),
        ):
            with pytest.raises(ValidationError, match="key"):
                call()

    def test_concurrent_writers_never_tear_an_object(self) -> None:
        store = self.make()
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
        store = self.make()
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
        with pytest.raises(ValidationError, match="key"):
            self.make().lock("../run.lock", "me")
