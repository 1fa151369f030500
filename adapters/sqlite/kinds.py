"""The SQLite metrics kind, for configs and the CLI."""

from __future__ import annotations

from typing import Any

import attrs

from galley.adapters.composition import AdapterKind, Built


@attrs.frozen
class SqliteMetricsOptions:
    path: str = "runs/metrics.db"


def _sqlite(o: SqliteMetricsOptions, built: Built) -> Any:
    from galley.adapters.sqlite.metrics import SqliteMetricsStore

    return SqliteMetricsStore(o.path)


KINDS = (
    AdapterKind(
        "metrics",
        "sqlite",
        "an SQLite file (WAL), shared by processes",
        SqliteMetricsOptions,
        _sqlite,
    ),
)
