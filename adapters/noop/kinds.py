"""The noop kinds, for configs and the CLI: every port's fake."""

from __future__ import annotations

from typing import Any

import attrs

from galley.adapters.composition import AdapterKind, Built, NoOptions


@attrs.frozen
class NoopTrainingOptions:
    sensitivity: float = 100.0
    floor: float = 0.05


@attrs.frozen
class NoopDatasetOptions:
    seed: int = 0
    train_rows: int = 256
    test_rows: int = 32


@attrs.frozen
class NoopCompleterOptions:
    scripted: dict[str, str] = attrs.field(factory=dict)


def _training(o: NoopTrainingOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopTrainingClient

    return NoopTrainingClient(built["blobs"], sensitivity=o.sensitivity, floor=o.floor)


def _datasets(o: NoopDatasetOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopDatasetStore

    return NoopDatasetStore(seed=o.seed, train_rows=o.train_rows, test_rows=o.test_rows)


def _blobs(o: NoOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopBlobStore

    return NoopBlobStore()


def _hub(o: NoOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopHubClient

    return NoopHubClient()


def _metrics(o: NoOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopMetricsStore

    return NoopMetricsStore()


def _completer(o: NoopCompleterOptions, built: Built) -> Any:
    from galley.adapters.noop import NoopCompleter

    return NoopCompleter(o.scripted, blobs=built["blobs"])


KINDS = (
    AdapterKind(
        "training",
        "noop",
        "fake one-parameter model: loss falls with steps and LR",
        NoopTrainingOptions,
        _training,
    ),
    AdapterKind(
        "datasets",
        "noop",
        "in-memory datasets; unknown names give a synthetic chat task",
        NoopDatasetOptions,
        _datasets,
    ),
    AdapterKind("blobs", "noop", "in-memory blobs (lost at exit)", NoOptions, _blobs),
    AdapterKind("hub", "noop", "synthetic in-memory model repos", NoOptions, _hub),
    AdapterKind("metrics", "noop", "in-memory metric rows", NoOptions, _metrics),
    AdapterKind(
        "completer", "noop", "scripted or echoed answers", NoopCompleterOptions, _completer
    ),
)
