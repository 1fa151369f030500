"""The noop adapters pass every port's contract suite."""

from __future__ import annotations

from galley.adapters.hf.local_hub import LocalDirectoryHub
from galley.adapters.noop import (
    NoopBlobStore,
    NoopCompleter,
    NoopDatasetStore,
    NoopHubClient,
    NoopMetricsStore,
    NoopTrainingClient,
)
from tests.contracts.blob_store import BlobStoreContract
from tests.contracts.completer import CompleterContract
from tests.contracts.dataset_store import DatasetStoreContract
from tests.contracts.hub_client import HubClientContract
from tests.contracts.metrics_store import MetricsStoreContract
from tests.contracts.training_client import TrainingClientContract


class TestNoopBlobStore(BlobStoreContract):
    def make(self) -> NoopBlobStore:
        return NoopBlobStore()


class TestNoopMetricsStore(MetricsStoreContract):
    def make(self) -> NoopMetricsStore:
        return NoopMetricsStore()


class TestNoopDatasetStore(DatasetStoreContract):
    def make(self) -> tuple[NoopDatasetStore, str]:
        return NoopDatasetStore(), "anything"


class TestNoopDatasetStoreGivenData(DatasetStoreContract):
    def make(self) -> tuple[NoopDatasetStore, str]:
        rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(12)]
        return NoopDatasetStore({"mine": {"train": rows}}), "mine"


class TestNoopHubClient(HubClientContract):
    def make(self) -> tuple[NoopHubClient, str]:
        return NoopHubClient(), "org/model"


class TestLocalDirectoryHub(HubClientContract):
    def make(self) -> tuple[LocalDirectoryHub, str]:
        import tempfile
        from pathlib import Path

        root = Path(tempfile.mkdtemp())
        (root / "org" / "model").mkdir(parents=True)
        (root / "org" / "model" / "config.json").write_text('{"model_type": "llama"}')
        (root / "org" / "model" / "weights.bin").write_bytes(b"\x00")
        return LocalDirectoryHub(root), "org/model"


class TestNoopTrainingClient(TrainingClientContract):
    def make(self) -> tuple[NoopTrainingClient, str]:
        return NoopTrainingClient(NoopBlobStore()), "galley/tiny-lm"


class TestNoopCompleter(CompleterContract):
    def make(self) -> NoopCompleter:
        return NoopCompleter()


def test_the_noop_hub_leaves_no_folder_behind() -> None:
    hub = NoopHubClient()
    folder = hub.download("org/model", "config.json").parent
    assert folder.is_dir()
    hub.close()
    assert not folder.exists()
