"""MetricsStore: per-step metrics of runs, readable while a run is going."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from galley.core.records import MetricRecord


@runtime_checkable
class MetricsStore(Protocol):
    """``record`` may buffer; after ``flush`` every recorded row is durable and visible to
    ``read`` from any process. Rows of a run come back in the order they were recorded, each
    with the stream (``train``, ``eval``, ...) its writer gave it."""

    def record(self, record: MetricRecord) -> None:
        """Append one row (may buffer until ``flush``)."""
        ...

    def flush(self) -> None:
        """Make every recorded row durable and visible to readers."""
        ...

    def read(self, run_id: str) -> list[MetricRecord]:
        """Every flushed row of ``run_id`` in record order, as recorded (stream, step,
        metrics, time); [] for an unknown run."""
        ...
