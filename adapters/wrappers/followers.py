"""The adapters of process i > 0 in a run of several processes: process 0 owns the run.

Every process runs the same workflow, but one of them writes the run's own files (its lock,
record, checkpoint index, retention deletes) and its metrics, trackers included: the others
see the run's store read-only and record no metrics. Checkpoint files are the training
adapter's own business: it holds the real store and writes each process's part of a
checkpoint itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from galley.core.adapter_set import Adapters
from galley.core.runs.records import MetricRecord
from galley.ports.blobs import BlobLock, BlobStore
from galley.ports.metrics import MetricsSink

log = structlog.get_logger()


class _NotHeld:
    """Process 0 holds the run's lock; a follower runs under it."""

    def release(self) -> None:
        pass


class FollowerBlobStore:
    """Reads through to the run's store; writes, deletes and locks are process 0's."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner

    def read(self, key: str) -> bytes:
        return self.inner.read(key)

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return self.inner.stream(key, chunk_size)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def write(self, key: str, data: bytes) -> None:
        log.debug("follower.write_skipped", key=key)

    def delete(self, key: str) -> None:
        log.debug("follower.delete_skipped", key=key)

    def lock(self, key: str, owner: str) -> BlobLock:
        return _NotHeld()


class FollowerMetrics:
    """Records nothing (process 0 records the run's metrics); reads through when it can."""

    def __init__(self, inner: MetricsSink) -> None:
        self.inner = inner

    def record(self, record: MetricRecord) -> None:
        pass

    def flush(self) -> None:
        pass

    def read(self, run_id: str) -> list[MetricRecord]:
        read = getattr(self.inner, "read", None)
        return list(read(run_id)) if read is not None else []


def for_process(adapters: Adapters, index: int) -> Adapters:
    """``adapters`` as process ``index`` of a run uses them."""
    if index == 0:
        return adapters
    return adapters.replace(
        blobs=FollowerBlobStore(adapters.blobs), metrics=FollowerMetrics(adapters.metrics)
    )
