"""The metrics port: sinks that take metric rows, and stores that also read them back.

Every metrics adapter is a :class:`MetricsSink`; one that can also read rows back is a
:class:`MetricsStore`. Reading back is what joins a resumed run's earlier rows and what
``galley plot`` draws from; an experiment tracker that only takes rows is a full adapter too.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from galley.core.records import MetricRecord


@runtime_checkable
class MetricsSink(Protocol):
    """``record`` may buffer; after ``flush`` every recorded row is durable. Each row carries
    the stream (``train``, ``eval``, ...) its writer gave it."""

    def record(self, record: MetricRecord) -> None:
        """Append one row (may buffer until ``flush``)."""
        ...

    def flush(self) -> None:
        """Make every recorded row durable (and visible to readers, for a store)."""
        ...


@runtime_checkable
class MetricsReader(Protocol):
    def read(self, run_id: str) -> list[MetricRecord]:
        """Every flushed row of ``run_id`` in record order, as recorded (stream, step,
        metrics, time), from any process; [] for an unknown run."""
        ...


@runtime_checkable
class MetricsStore(MetricsSink, MetricsReader, Protocol):
    """A sink whose rows can be read back."""
