"""MetricsStore: per-step metrics of runs, readable while a run is going."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from galley.core.records import MetricRecord


@runtime_checkable
class MetricsStore(Protocol):
    """``record`` may buffer; after ``flush`` every recorded row is durable and visible to
    ``read`` from any process. Rows of a run come back in the order they were recorded."""

    def record(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None: ...

    def flush(self) -> None: ...

    def read(self, run_id: str) -> list[MetricRecord]: ...
