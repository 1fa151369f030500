"""Noop adapters: deterministic, fast, realistic fakes of all six ports that succeed.

Use them to develop and test workflows without a model, a network or a disk. A fake that
succeeds is not an adapter that is not configured: see ``galley.adapters.helpers.unconfigured``.
"""

from __future__ import annotations

from typing import Any

from galley.adapters.helpers.faults import FaultInjector, Faults, InjectedFaultError
from galley.adapters.noop.completer import NoopCompleter
from galley.adapters.noop.stores import (
    MemoryDataset,
    NoopBlobStore,
    NoopDatasetStore,
    NoopHubClient,
    NoopMetricsStore,
    synthetic_rows,
)
from galley.adapters.noop.tokenizer import ByteTokenizer
from galley.adapters.noop.training import NoopTrainingClient, NoopTrainingSession
from galley.core.adapter_set import PORT_NAMES, Adapters
from galley.core.errors import ValidationError


def noop_adapters(*, faults: Faults | None = None, **overrides: Any) -> Adapters:
    """All six noop adapters, any of them replaced by ``overrides`` (``metrics=MyStore()``).

    The noop training client and completer save and load through the ``blobs`` adapter in
    the result, whether it is the noop one or an override. ``faults`` injects transient
    failures and latency into every noop adapter."""
    unknown = sorted(set(overrides) - set(PORT_NAMES))
    if unknown:
        raise ValidationError(
            "noop_adapters",
            f"unknown port(s) {', '.join(unknown)}; expected {', '.join(PORT_NAMES)}",
        )
    blobs = overrides.get("blobs") or NoopBlobStore(faults)
    defaults: dict[str, Any] = {
        "training": lambda: NoopTrainingClient(blobs, faults=faults),
        "datasets": lambda: NoopDatasetStore(faults=faults),
        "hub": NoopHubClient,
        "metrics": lambda: NoopMetricsStore(faults),
        "completer": lambda: NoopCompleter(blobs=blobs, faults=faults),
    }
    built = {
        port: overrides[port] if port in overrides else make() for port, make in defaults.items()
    }
    return Adapters(blobs=blobs, **built)


__all__ = [
    "ByteTokenizer",
    "FaultInjector",
    "Faults",
    "InjectedFaultError",
    "MemoryDataset",
    "NoopBlobStore",
    "NoopCompleter",
    "NoopDatasetStore",
    "NoopHubClient",
    "NoopMetricsStore",
    "NoopTrainingClient",
    "NoopTrainingSession",
    "noop_adapters",
    "synthetic_rows",
]
