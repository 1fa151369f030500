"""The fsspec kinds (blobs, JSONL metrics), for configs and the CLI."""

from __future__ import annotations

import os
from typing import Any

import attrs

from galley.adapters.composition import AdapterKind, Built


def galley_home() -> str:
    """The folder galley's files go under when no blob store URL is given: ``GALLEY_HOME``,
    else the current folder (runs, the registry and serve's sessions then sit in its
    ``runs/``)."""
    return os.environ.get("GALLEY_HOME") or "."


@attrs.frozen
class FsspecBlobOptions:
    # Any fsspec URL: a local folder, memory://x, s3://bucket/prefix, ... (default: galley_home)
    url: str = attrs.field(factory=galley_home)
    storage_options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class JsonlMetricsOptions:
    url: str = "runs"  # <url>/<run_id>/metrics.jsonl
    storage_options: dict[str, Any] = attrs.field(factory=dict)


def _blobs(o: FsspecBlobOptions, built: Built) -> Any:
    from galley.adapters.fsspec.blobs import FsspecBlobStore

    return FsspecBlobStore(o.url, **o.storage_options)


def _jsonl(o: JsonlMetricsOptions, built: Built) -> Any:
    from galley.adapters.fsspec.metrics import JsonlMetricsStore

    return JsonlMetricsStore(o.url, **o.storage_options)


KINDS = (
    AdapterKind(
        "blobs",
        "fsspec",
        "any fsspec URL (file, memory, s3, gcs...), atomic writes",
        FsspecBlobOptions,
        _blobs,
    ),
    AdapterKind(
        "metrics",
        "jsonl",
        "one JSON line per row at <url>/<run_id>/metrics.jsonl (fsspec)",
        JsonlMetricsOptions,
        _jsonl,
    ),
)
