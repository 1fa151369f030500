"""In-memory DatasetStore, BlobStore, HubClient and MetricsStore: deterministic and thread-safe."""

from __future__ import annotations

import copy
import fnmatch
import json
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from galley.adapters.helpers.faults import FaultInjector, Faults
from galley.adapters.helpers.locks import ProcessLocks, Release
from galley.core.errors import NotFoundError, ValidationError
from galley.core.keys import check_key, check_prefix
from galley.core.runs.records import MetricRecord

Row = dict[str, Any]

WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "lemon",
    "tiger",
    "piano",
    "candle",
    "forest",
    "garden",
    "silver",
    "window",
    "rocket",
    "pepper",
    "planet",
    "bridge",
    "orange",
    "castle",
    "mirror",
    "button",
    "violet",
    "summer",
    "winter",
    "jacket",
    "pencil",
    "market",
    "island",
    "dragon",
    "spirit",
    "harbor",
)


def synthetic_rows(name: str, split: str, n: int, seed: int) -> list[Row]:
    """Rows of a small task a model cannot do before training: reverse a word. Each is a chat
    (``messages``) and, as preference datasets often also are, a pair in TRL's format: the
    reversed word chosen over the word as given."""
    rng = np.random.default_rng([seed, len(name), sum(map(ord, name + split))])
    rows = []
    for _ in range(n):
        word = WORDS[int(rng.integers(len(WORDS)))] + WORDS[int(rng.integers(len(WORDS)))][:3]
        prompt = {"role": "user", "content": f"Reverse the letters of: {word}"}
        answer = {"role": "assistant", "content": word[::-1]}
        rows.append(
            {
                "messages": [prompt, answer],
                "prompt": [prompt],
                "chosen": [answer],
                "rejected": [{"role": "assistant", "content": word}],
            }
        )
    return rows


@attrs.frozen
class MemoryDataset:
    """A dataset's splits (``split is None``) or one split's rows."""

    source: str
    splits: Mapping[str, tuple[Row, ...]]
    split: str | None = None

    @property
    def rows(self) -> tuple[Row, ...]:
        if self.split is None:
            raise ValidationError("dataset", f"{self.source!r}: choose a split first (get_split)")
        return self.splits[self.split]

    def with_rows(self, rows: Sequence[Row]) -> MemoryDataset:
        return attrs.evolve(self, splits={**self.splits, self.split: tuple(rows)})  # type: ignore[dict-item]


class NoopDatasetStore:
    """Datasets given as ``{name: {split: rows}}``; any other name loads a synthetic
    word-reversal chat dataset (``train`` and ``test`` splits), the same for the same seed."""

    def __init__(
        self,
        datasets: Mapping[str, Mapping[str, Sequence[Row]]] | None = None,
        *,
        seed: int = 0,
        train_rows: int = 256,
        test_rows: int = 32,
        faults: Faults | None = None,
    ) -> None:
        self._datasets = {
            k: {s: tuple(r) for s, r in v.items()} for k, v in (datasets or {}).items()
        }
        self._seed, self._sizes = seed, {"train": train_rows, "test": test_rows}
        self._faults = FaultInjector(faults)

    def load(self, source: str, split: str | None = None) -> MemoryDataset:
        self._faults("datasets.load")
        if not source:
            raise ValidationError("dataset", "expected a dataset name")
        splits = self._datasets.get(source) or {
            s: tuple(synthetic_rows(source, s, n, self._seed)) for s, n in self._sizes.items()
        }
        handle = MemoryDataset(source, splits)
        return handle if split is None else self.get_split(handle, split)

    def get_split(self, handle: MemoryDataset, split: str) -> MemoryDataset:
        if split not in handle.splits:
            raise NotFoundError(
                f"dataset {handle.source!r} has no split {split!r}; "
                f"it has {', '.join(handle.splits)}"
            )
        return attrs.evolve(handle, split=split)

    def splits(self, handle: MemoryDataset) -> list[str]:
        return list(handle.splits)

    def num_rows(self, handle: MemoryDataset) -> int:
        return len(handle.rows)

    def shuffle(self, handle: MemoryDataset, seed: int) -> MemoryDataset:
        rows = handle.rows
        order = np.random.default_rng(seed).permutation(len(rows))
        return handle.with_rows([rows[i] for i in order])

    def take(self, handle: MemoryDataset, n: int) -> MemoryDataset:
        return handle.with_rows(handle.rows[: max(0, n)])

    def skip(self, handle: MemoryDataset, n: int) -> MemoryDataset:
        return handle.with_rows(handle.rows[max(0, n) :])

    def select(self, handle: MemoryDataset, indices: Sequence[int]) -> MemoryDataset:
        rows = handle.rows
        for i in indices:
            if not -len(rows) <= i < len(rows):
                raise ValidationError("indices", f"index {i} is out of range for {len(rows)} rows")
        return handle.with_rows([rows[i] for i in indices])

    def to_list(self, handle: MemoryDataset) -> list[Row]:
        self._faults("datasets.to_list")
        return copy.deepcopy(list(handle.rows))  # callers may not mutate the store


class NoopBlobStore:
    """Blobs in a dict. Writes replace whole objects under a lock, so they are atomic. Locks
    (``lock``) are exact: the blobs live in this process, and so do their holders."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._faults = FaultInjector(faults)
        self._locks = ProcessLocks()

    def read(self, key: str) -> bytes:
        check_key(key)
        self._faults("blobs.read")
        with self._lock:
            if key not in self._blobs:
                raise NotFoundError(f"no blob {key!r}")
            return self._blobs[key]

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        data = self.read(key)
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]

    def write(self, key: str, data: bytes) -> None:
        check_key(key)
        self._faults("blobs.write")
        with self._lock:
            self._blobs[key] = bytes(data)

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return key in self._blobs

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        folder = prefix.rstrip("/") + "/" if prefix else ""
        with self._lock:
            return sorted(k for k in self._blobs if k.startswith(folder))

    def delete(self, key: str) -> None:
        check_key(key)
        self._faults("blobs.delete")
        with self._lock:
            self._blobs.pop(key, None)

    def lock(self, key: str, owner: str) -> Release:
        check_key(key)
        held = self._locks.take(key, owner)
        with self._lock:
            self._blobs[key] = owner.encode()

        def release() -> None:
            with self._lock:
                self._blobs.pop(key, None)
            held.release()

        return Release(release)


def _check_repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    if not repo_id or len(parts) > 2 or any(p in {"", ".", ".."} for p in parts):
        raise ValidationError("repo_id", f"{repo_id!r} is not a repo id like 'org/name'")
    return repo_id


class NoopHubClient:
    """Repos given as ``{repo_id: {path: bytes | str}}``; any other repo id is a small
    synthetic model repo (a config and a README). Files are materialised in a temp folder."""

    def __init__(self, repos: Mapping[str, Mapping[str, bytes | str]] | None = None) -> None:
        self._repos = {k: dict(v) for k, v in (repos or {}).items()}
        self._folder: tempfile.TemporaryDirectory[str] | None = None  # made when first needed
        self._lock = threading.Lock()

    @property
    def _root(self) -> Path:
        """The folder files are materialised in: removed when the client is closed or garbage
        collected, or at exit."""
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="galley-noop-hub-")
        return Path(self._folder.name)

    def close(self) -> None:
        with self._lock:
            if self._folder is not None:
                self._folder.cleanup()
                self._folder = None

    def _files(self, repo_id: str) -> dict[str, bytes | str]:
        _check_repo_id(repo_id)
        if repo_id in self._repos:
            return self._repos[repo_id]
        config = {"model_type": "noop", "vocab_size": 259, "name": repo_id}
        return {"config.json": json.dumps(config), "README.md": f"# {repo_id}\nA noop model.\n"}

    def _materialise(self, repo_id: str, revision: str | None, names: Sequence[str]) -> Path:
        files = self._files(repo_id)
        with self._lock:
            folder = self._root / repo_id.replace("/", "--") / (revision or "main")
            for name in names:
                path = folder / name
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    data = files[name]
                    path.write_bytes(data.encode() if isinstance(data, str) else data)
        return folder

    def download(self, repo_id: str, filename: str, revision: str | None = None) -> Path:
        if filename not in self._files(repo_id):
            raise NotFoundError(f"repo {repo_id!r} has no file {filename!r}")
        return self._materialise(repo_id, revision, [filename]) / filename

    def snapshot(
        self, repo_id: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None
    ) -> Path:
        names = [
            n
            for n in self._files(repo_id)
            if allow_patterns is None or any(fnmatch.fnmatch(n, p) for p in allow_patterns)
        ]
        return self._materialise(repo_id, revision, names)

    def list_files(self, repo_id: str, revision: str | None = None) -> list[str]:
        return sorted(self._files(repo_id))


class NoopMetricsStore:
    """Metric rows in memory, per run, in the order recorded."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._rows: dict[str, list[MetricRecord]] = {}
        self._lock = threading.Lock()
        self._faults = FaultInjector(faults)

    def record(self, record: MetricRecord) -> None:
        self._faults("metrics.record")
        with self._lock:
            self._rows.setdefault(record.run_id, []).append(record)  # frozen: safe to keep

    def flush(self) -> None:
        self._faults("metrics.flush")

    def read(self, run_id: str) -> list[MetricRecord]:
        with self._lock:
            return list(self._rows.get(run_id, ()))
