"""HubClient: model repositories (weights, configs, tokenizers) on a hub or a local folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class HubClient(Protocol):
    """Files come back as local paths (downloaded or cached) that stay valid for the process.
    A missing repo or file raises ``NotFoundError`` naming it."""

    def download(self, repo_id: str, filename: str, revision: str | None = None) -> Path:
        """Local path of one file of the repo at ``revision`` (default branch when None)."""
        ...

    def snapshot(
        self,
        repo_id: str,
        revision: str | None = None,
        allow_patterns: Sequence[str] | None = None,
    ) -> Path:
        """A local directory holding the repo's files (those matching ``allow_patterns``,
        glob patterns, when given)."""
        ...

    def list_files(self, repo_id: str, revision: str | None = None) -> list[str]:
        """Sorted repo-relative paths of every file."""
        ...
