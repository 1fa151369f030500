"""The huggingface_hub HubClient, offline, over a snapshot already in an HF cache folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from galley.adapters.hf.hub import HuggingFaceHubClient
from galley.adapters.testing import HubClientContract
from galley.core import NotFoundError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache: Path, repo_id: str, files: dict[str, str]) -> None:
    """Lay files out the way huggingface_hub caches a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, text in files.items():
        path = repo / "snapshots" / COMMIT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    fill_cache(
        tmp_path,
        "org/model",
        {
            "config.json": json.dumps({"model_type": "llama"}),
            "tokenizer.json": "{}",
            "weights/a.safetensors": "x",
        },
    )
    return tmp_path


class TestOfflineHub(HubClientContract):
    @pytest.fixture(autouse=True)
    def _cache(self, cache: Path) -> None:
        self.cache = cache

    def make_hub(self, tmp_path: Path) -> tuple[HuggingFaceHubClient, str]:
        return HuggingFaceHubClient(str(self.cache), offline=True), "org/model"


def test_hf_hub_offline_env_is_honoured(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = HuggingFaceHubClient(str(cache))
    assert hub.offline
    assert hub.list_files("org/model") == ["config.json", "tokenizer.json", "weights/a.safetensors"]
    assert hub.snapshot("org/model", allow_patterns=["*.json"]).name == COMMIT
    with pytest.raises(NotFoundError, match="'org/other'.*local HF cache"):
        hub.snapshot("org/other")


def test_revision_pins_a_snapshot(cache: Path) -> None:
    hub = HuggingFaceHubClient(str(cache), offline=True)
    assert hub.download("org/model", "config.json", revision=COMMIT).parent.name == COMMIT
    with pytest.raises(NotFoundError, match="at v9"):
        hub.download("org/model", "config.json", revision="v9")
