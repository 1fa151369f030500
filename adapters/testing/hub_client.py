"""The HubClient contract. Subclass it and define ``make_hub(tmp_path)``, returning a hub and
a repo id in it that holds ``config.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from galley.adapters.testing.contract import Contract
from galley.core import NotFoundError
from galley.ports import HubClient


class HubClientContract(Contract):
    port = "HubClient"

    def make_hub(self, tmp_path: Path) -> tuple[HubClient, str]:
        raise NotImplementedError

    def make(self) -> tuple[HubClient, str]:
        return self.make_hub(self.fresh_folder())

    def test_implements_the_port(self) -> None:
        """It has every method of the port (download, snapshot, list_files)."""
        assert isinstance(self.make()[0], HubClient)

    def test_list_download_snapshot(self) -> None:
        """Returns local paths: list_files the repo's files, sorted; download one file;
        snapshot a folder with the files asked for."""
        hub, repo = self.make()
        files = hub.list_files(repo)
        assert "config.json" in files and files == sorted(files)
        path = hub.download(repo, "config.json")
        assert isinstance(json.loads(path.read_text()), dict)
        folder = hub.snapshot(repo, allow_patterns=["*.json"])
        assert (folder / "config.json").read_bytes() == path.read_bytes()

    def test_missing_file_names_it(self) -> None:
        """Missing repos/files raise NotFoundError naming them."""
        hub, repo = self.make()
        with pytest.raises(NotFoundError, match="nope.bin"):
            hub.download(repo, "nope.bin")
