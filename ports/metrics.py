"""The metrics port: sinks that take metric rows, and stores that also read them back.

Every metrics adapter is a :class:`MetricsSink`; one that can also read rows back is a
:class:`MetricsStore`. Reading back is what joins a resumed run's earlier rows and what
``galley plot`` draws from; an experiment tracker that only takes rows is a full adapter too.
A sink that keeps runs of its own (W&B, MLflow, TensorBoard) is a :class:`RunTracker`: it is
told when a run starts and ends, and what it gives back is saved with the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from galley.core.runs.records import MetricRecord, RunOutcome, TrackedRun


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


@runtime_checkable
class RunTracker(MetricsSink, Protocol):
    """A sink with runs of its own. A tracker never fails the training run: one that cannot
    go on (not installed, no network, a full disk) warns once with the reason and drops out,
    and the other sinks still get every row."""

    def open_run(self, run: TrackedRun) -> Mapping[str, str]:
        """Start the tracker's run for ``run`` (or continue the one ``run.links`` names) and
        log the run's settings once. Returns what to save with the run so a resume finds the
        same tracker run again (the tracker's run id, ...), under keys prefixed with the
        tracker's name; {} when it has nothing to save or has dropped out."""
        ...

    def end_run(self, outcome: RunOutcome) -> None:
        """Make every recorded row durable, then mark the tracker's run ``outcome``."""
        ...
