"""A MetricsStore in one SQLite file (WAL mode: readers never block the writer), shared by
processes writing at once."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from galley.core.errors import ConfigError
from galley.core.runs.records import MetricRecord

OPEN_TIMEOUT_S = 30.0  # as long as a write waits for another process's (busy_timeout)


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
            self._create_when_free()
        except sqlite3.Error as e:
            raise ConfigError(
                f"metrics database {str(self.path)!r} cannot be opened as SQLite: {e}"
            ) from None

    def _create_when_free(self) -> None:
        """``_create``, again while another process holds the file: switching a new file to
        WAL takes a lock that SQLite refuses at once, without waiting, when two processes
        open the file together."""
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            try:
                return self._create()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _create(self) -> None:
        with self._connect() as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
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
