"""Several metrics adapters as one: ``adapters.metrics = ["jsonl", "wandb"]``.

Every row goes to every sink; reading comes from the first sink that can read. A sink that
fails is dropped with a warning, and the run and the other sinks go on: a tracker losing its
connection must not stop a training run that the other sinks still record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from galley.core.runs.records import MetricRecord, RunOutcome, TrackedRun
from galley.ports.metrics import RunTracker

log = structlog.get_logger("galley")


class FanOutMetrics:
    """A MetricsSink over ``sinks`` (name, adapter), in order."""

    def __init__(self, sinks: Sequence[tuple[str, Any]]) -> None:
        self.sinks = list(sinks)

    def _each(self, what: str, call: Callable[[Any], object]) -> None:
        for name, sink in list(self.sinks):
            try:
                call(sink)
            except Exception as e:
                self._drop(name, sink, what, e)

    def _drop(self, name: str, sink: Any, what: str, error: Exception) -> None:
        self.sinks = [(n, s) for n, s in self.sinks if s is not sink]
        log.warning(
            "metrics.sink_dropped",
            sink=name,
            call=what,
            error=f"{type(error).__name__}: {error}",
            left=[n for n, _ in self.sinks],
        )

    def record(self, record: MetricRecord) -> None:
        self._each("record", lambda sink: sink.record(record))

    def flush(self) -> None:
        self._each("flush", lambda sink: sink.flush())

    def open_run(self, run: TrackedRun) -> Mapping[str, str]:
        """Open the run in every sink that tracks runs; what they give, merged."""
        links: dict[str, str] = {}
        self._each("open_run", lambda sink: _tracker_links(sink, run, links))
        return links

    def end_run(self, outcome: RunOutcome) -> None:
        self._each("end_run", lambda sink: _end_tracker(sink, outcome))


def _tracker_links(sink: Any, run: TrackedRun, links: dict[str, str]) -> None:
    if isinstance(sink, RunTracker):
        links.update(sink.open_run(run))


def _end_tracker(sink: Any, outcome: RunOutcome) -> None:
    if isinstance(sink, RunTracker):
        sink.end_run(outcome)


class FanOutStore(FanOutMetrics):
    """A FanOutMetrics with at least one sink that reads: a MetricsStore."""

    def read(self, run_id: str) -> list[MetricRecord]:
        """The rows of the first sink that can read them; one that fails is dropped and the
        next is asked. Raises the last failure if none is left that can read."""
        failure: Exception | None = None
        for name, sink in list(self.sinks):
            if not callable(getattr(sink, "read", None)):
                continue
            try:
                rows: list[MetricRecord] = sink.read(run_id)
                return rows
            except Exception as e:
                self._drop(name, sink, "read", e)
                failure = e
        if failure is not None:
            raise failure
        return []


def fan_out(sinks: Sequence[tuple[str, Any]]) -> FanOutMetrics:
    """One adapter over ``sinks``: a store when one of them can read, else a sink."""
    readable = any(callable(getattr(sink, "read", None)) for _, sink in sinks)
    return FanOutStore(sinks) if readable else FanOutMetrics(sinks)
