"""The six ports: what stages need from the outside world, as ``typing.Protocol``s.

An adapter is any object with these methods (no base class needed). Each docstring says what
an adapter must guarantee.
"""

from galley.core.domain.tokenizer import Tokenizer
from galley.ports.blobs import BlobLock, BlobStore
from galley.ports.completer import Completer, Prompt
from galley.ports.datasets import DatasetHandle, DatasetStore, Row
from galley.ports.hub import HubClient
from galley.ports.metrics import MetricsReader, MetricsSink, MetricsStore, RunTracker
from galley.ports.training import TrainingClient, TrainingSession

PORTS: dict[str, type] = {
    "training": TrainingClient,
    "datasets": DatasetStore,
    "blobs": BlobStore,
    "hub": HubClient,
    "metrics": MetricsSink,  # a store (which also reads) is one too
    "completer": Completer,
}

__all__ = [
    "PORTS",
    "BlobLock",
    "BlobStore",
    "Completer",
    "DatasetHandle",
    "DatasetStore",
    "HubClient",
    "MetricsReader",
    "MetricsSink",
    "MetricsStore",
    "Prompt",
    "Row",
    "RunTracker",
    "Tokenizer",
    "TrainingClient",
    "TrainingSession",
]
