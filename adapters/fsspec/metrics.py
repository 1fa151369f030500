"""A MetricsStore of JSON lines over any fsspec URL: ``<root>/<run_id>/metrics.jsonl``, one line
per row, readable while a run is going and from other processes."""

from __future__ import annotations

import json
import threading
from typing import Any

import structlog

from galley.adapters.fsspec.blobs import open_filesystem
from galley.core.errors import ValidationError
from galley.core.keys import check_name
from galley.core.runs.records import MetricRecord

METRICS_FILE = "metrics.jsonl"


def _row(record: MetricRecord) -> dict[str, Any]:
    return {
        "run_id": record.run_id,
        "stream": record.stream,
        "step": record.step,
        "time": record.time,
        "metrics": dict(record.metrics),
    }


class JsonlMetricsStore:
    """One JSON line per record. On a local disk each record is appended and flushed at once;
    on object stores (no append) lines are buffered and the object rewritten on ``flush``."""

    def __init__(self, url: str, *, flush_every: int = 50, **storage_options: Any) -> None:
        self.url = url
        self.fs, self.root, self.appendable = open_filesystem(
            url, "metrics store", **storage_options
        )
        self.flush_every = flush_every
        self._pending: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def _path(self, run_id: str) -> str:
        return f"{self.root}/{check_name(run_id, 'run_id')}/{METRICS_FILE}"

    def record(self, record: MetricRecord) -> None:
        run_id = record.run_id
        line = json.dumps(_row(record), sort_keys=True) + "\n"
        with self._lock:
            if self.appendable:
                path = self._path(run_id)
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                with self.fs.open(path, "a", encoding="utf-8") as f:
                    f.write(line)  # one write of one whole line
                return
            self._pending.setdefault(run_id, []).append(line)
            if len(self._pending[run_id]) >= self.flush_every:
                self._flush_run(run_id)

    def _flush_run(self, run_id: str) -> None:
        lines = self._pending.pop(run_id, [])
        if lines:
            path = self._path(run_id)
            existing = self.fs.cat_file(path) if self.fs.isfile(path) else b""
            self.fs.pipe_file(path, existing + "".join(lines).encode())
            self.fs.invalidate_cache()

    def flush(self) -> None:
        with self._lock:
            for run_id in list(self._pending):
                self._flush_run(run_id)

    def read(self, run_id: str) -> list[MetricRecord]:
        path = self._path(run_id)
        if not self.fs.isfile(path):
            return []
        rows = []
        data: bytes = self.fs.cat_file(path)
        where = f"{self.url}/{run_id}/{METRICS_FILE}"
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            writing = number == len(lines)  # no newline after it yet: still being appended
            try:
                doc = json.loads(raw.decode())
            except UnicodeDecodeError as e:
                raise ValidationError(
                    f"{where}, line {number}", f"not UTF-8 text (byte {e.start + 1} of the line)"
                ) from None
            except json.JSONDecodeError as e:
                if writing:
                    structlog.get_logger("galley").info(
                        "metrics.partial_line", file=where, line=number
                    )
                    continue
                raise ValidationError(f"{where}, line {number}", f"not a JSON row: {e}") from None
            try:
                rows.append(
                    MetricRecord(
                        doc["run_id"], doc["stream"], doc["step"], doc["metrics"], doc["time"]
                    )
                )
            except (KeyError, TypeError, ValueError) as e:
                raise ValidationError(
                    f"{self.url}/{run_id}/{METRICS_FILE}, line {number}",
                    f"expected a metrics row with run_id, stream, step, metrics and time ({e})",
                ) from None
        return rows
