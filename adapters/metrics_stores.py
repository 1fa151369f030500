"""MetricsStores that outlive the process: JSON lines over fsspec, and SQLite.

Both are readable while a run is going and from other processes: the JSONL store appends one
line per step to ``<root>/<run_id>/metrics.jsonl``; the SQLite store uses WAL mode, so
readers never block the writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from galley.adapters.fsspec_blobs import open_filesystem
from galley.core.errors import ConfigError, ValidationError
from galley.core.keys import check_name
from galley.core.records import MetricRecord

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
        lines = self.fs.cat_file(path).decode().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line another process is still writing
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


class SqliteMetricsStore:
    """Rows in one SQLite file (WAL mode), safe for several processes writing at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ConfigError(f"metrics database {str(self.path)!r} is a folder; expected a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"metrics database {str(self.path)!r}: its folder cannot be made: {e.strerror or e}"
            ) from None
        self._local = threading.local()
        try:
            self._create()
        except sqlite3.Error as e:
            raise ConfigError(
                f"metrics database {str(self.path)!r} cannot be opened as SQLite: {e}"
            ) from None

    def _create(self) -> None:
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "run_id TEXT NOT NULL, stream TEXT NOT NULL, step INTEGER NOT NULL, "
                "time REAL NOT NULL, metrics TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id, id)")
            columns = {row[1] for row in db.execute("PRAGMA table_info(metrics)")}
        if "stream" not in columns:
            raise ConfigError(
                f"metrics database {str(self.path)!r} was written by an earlier galley whose "
                "rows do not say their stream (train, eval); give a new path"
            )

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0)
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def record(self, record: MetricRecord) -> None:
        with self._connect() as db:  # one transaction per row: durable once record returns
            db.execute(
                "INSERT INTO metrics (run_id, stream, step, time, metrics) VALUES (?, ?, ?, ?, ?)",
                (
                    record.run_id,
                    record.stream,
                    record.step,
                    record.time,
                    json.dumps(dict(record.metrics), sort_keys=True),
                ),
            )

    def flush(self) -> None:
        """Every record is committed as it is made; nothing is buffered."""

    def read(self, run_id: str) -> list[MetricRecord]:
        cursor = self._connect().execute(
            "SELECT run_id, stream, step, metrics, time FROM metrics WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return [MetricRecord(r, st, s, json.loads(m), t) for r, st, s, m, t in cursor.fetchall()]
