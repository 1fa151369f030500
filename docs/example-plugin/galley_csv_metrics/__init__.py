"""An example galley plugin: a MetricsStore that writes ``<folder>/<run_id>.csv``.

Install it next to galley (``pip install .``) and select it by name:
``galley run sft --set adapters.metrics=csv --set adapters.metrics.folder=metrics``.
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Any

import attrs

from galley.adapters.composition import AdapterKind
from galley.core import MetricRecord

FIELDS = ("run_id", "stream", "step", "time", "name", "value")


class CsvMetricsStore:
    """One row per metric value: run, stream, step, time, name, value."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.csv"

    def record(self, record: MetricRecord) -> None:
        path = self._path(record.run_id)
        with self._lock:
            new = not path.exists()
            with path.open("a", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(FIELDS)
                for name, value in record.metrics.items():
                    writer.writerow(
                        (record.run_id, record.stream, record.step, record.time, name, value)
                    )

    def flush(self) -> None:
        """Every row is written when recorded."""

    def read(self, run_id: str) -> list[MetricRecord]:
        path = self._path(run_id)
        if not path.exists():
            return []
        rows: dict[tuple[str, int, float], dict[str, float]] = {}
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                key = (row["stream"], int(row["step"]), float(row["time"]))
                rows.setdefault(key, {})[row["name"]] = float(row["value"])
        return [MetricRecord(run_id, s, step, m, t) for (s, step, t), m in rows.items()]


@attrs.frozen
class CsvOptions:
    folder: str = "metrics"


def build(options: CsvOptions, built: Any) -> CsvMetricsStore:
    return CsvMetricsStore(options.folder)


KINDS = (AdapterKind("metrics", "csv", "one CSV file per run", CsvOptions, build),)
