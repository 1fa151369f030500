"""The HubClient contract; ``make`` returns a hub and a repo id in it that holds config.json."""

from __future__ import annotations

import json

import pytest

from galley.core import NotFoundError
from galley.ports import HubClient


class HubClientContract:
    def make(self) -> tuple[HubClient, str]:
        raise NotImplementedError

    def test_implements_the_port(self) -> None:
        assert isinstance(self.make()[0], HubClient)

    def test_list_download_snapshot(self) -> None:
        hub, repo = self.make()
        files = hub.list_files(repo)
        assert "config.json" in files and files == sorted(files)
        path = hub.download(repo, "config.json")
        assert isinstance(json.loads(path.read_text()), dict)
        folder = hub.snapshot(repo, allow_patterns=["*.json"])
        assert (folder / "config.json").read_bytes() == path.read_bytes()

    def test_missing_file_names_it(self) -> None:
        hub, repo = self.make()
        with pytest.raises(NotFoundError, match="nope.bin"):
            hub.download(repo, "nope.bin")
