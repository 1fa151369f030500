"""The noop adapters pass every port's contract suite."""

from __future__ import annotations

from pathlib import Path

from galley.adapters.hf.local_hub import LocalDirectoryHub
from galley.adapters.noop import (
    NoopBlobStore,
    NoopCompleter,
    NoopDatasetStore,
    NoopHubClient,
    NoopMetricsStore,
    NoopTrainingClient,
)
from galley.adapters.testing import (
    BlobStoreContract,
    CompleterContract,
    DatasetStoreContract,
    HubClientContract,
    MetricsStoreContract,
    TrainingClientContract,
)


class TestNoopBlobStore(BlobStoreContract):
    def make_store(self, tmp_path: Path) -> NoopBlobStore:
        return NoopBlobStore()


class TestNoopMetricsStore(MetricsStoreContract):
    def make_store(self, tmp_path: Path) -> NoopMetricsStore:
        return NoopMetricsStore()


class TestNoopDatasetStore(DatasetStoreContract):
    def make_store(self, tmp_path: Path) -> tuple[NoopDatasetStore, str]:
        return NoopDatasetStore(), "anything"


class TestNoopDatasetStoreGivenData(DatasetStoreContract):
    def make_store(self, tmp_path: Path) -> tuple[NoopDatasetStore, str]:
        rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(12)]
        return NoopDatasetStore({"mine": {"train": rows}}), "mine"


class TestNoopHubClient(HubClientContract):
    def make_hub(self, tmp_path: Path) -> tuple[NoopHubClient, str]:
        return NoopHubClient(), "org/model"


class TestLocalDirectoryHub(HubClientContract):
    def make_hub(self, tmp_path: Path) -> tuple[LocalDirectoryHub, str]:
        root = tmp_path
        (root / "org" / "model").mkdir(parents=True)
        (root / "org" / "model" / "config.json").write_text('{"model_type": "llama"}')
        (root / "org" / "model" / "weights.bin").write_bytes(b"\x00")
        return LocalDirectoryHub(root), "org/model"


class TestNoopTrainingClient(TrainingClientContract):
    def make_client(self, tmp_path: Path) -> tuple[NoopTrainingClient, str]:
        return NoopTrainingClient(NoopBlobStore()), "galley/tiny-lm"


class TestNoopCompleter(CompleterContract):
    def make_completer(self, tmp_path: Path) -> NoopCompleter:
        # vary: sampled answers differ per seed, as a training session's sampler's do (the
        # default, 0, answers exactly what is scripted, whatever the seed)
        return NoopCompleter(vary=0.3)


def test_the_noop_hub_leaves_no_folder_behind() -> None:
    hub = NoopHubClient()
    folder = hub.download("org/model", "config.json").parent
    assert folder.is_dir()
    hub.close()
    assert not folder.exists()
