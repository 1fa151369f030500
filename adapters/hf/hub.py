"""A HubClient over ``huggingface_hub``: downloads into the HF cache (``HF_HOME``), honours
``HF_HUB_OFFLINE`` (then only the cache is used) and revisions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from galley.core.errors import NotFoundError

MISSING = (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    FileNotFoundError,
)


def _offline_from_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


class HuggingFaceHubClient:
    """``offline=None`` reads ``HF_HUB_OFFLINE`` at each call; the token (if any) comes from
    ``token`` or the usual HF environment/credential files and is never logged."""

    def __init__(
        self, cache_dir: str | None = None, *, offline: bool | None = None, token: str | None = None
    ) -> None:
        self.cache_dir = cache_dir
        self._offline = offline
        self._token = token

    @property
    def offline(self) -> bool:
        return self._offline if self._offline is not None else _offline_from_env()

    def download(self, repo_id: str, filename: str, revision: str | None = None) -> Path:
        try:
            return Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=self.cache_dir,
                    local_files_only=self.offline,
                    token=self._token,
                )
            )
        except MISSING as e:
            raise NotFoundError(
                f"hub repo {repo_id!r} has no file {filename!r} "
                f"at {revision or 'main'} ({type(e).__name__})"
            ) from None

    def snapshot(
        self, repo_id: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None
    ) -> Path:
        try:
            return Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=self.cache_dir,
                    allow_patterns=list(allow_patterns) if allow_patterns else None,
                    local_files_only=self.offline,
                    token=self._token,
                )
            )
        except MISSING as e:
            where = "in the local HF cache (offline)" if self.offline else "on the hub"
            raise NotFoundError(
                f"hub repo {repo_id!r} at {revision or 'main'} "
                f"was not found {where} ({type(e).__name__})"
            ) from None

    def list_files(self, repo_id: str, revision: str | None = None) -> list[str]:
        if self.offline:
            folder = self.snapshot(repo_id, revision)
            return sorted(
                p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
            )
        try:
            return sorted(HfApi(token=self._token).list_repo_files(repo_id, revision=revision))
        except MISSING as e:
            raise NotFoundError(
                f"hub repo {repo_id!r} at {revision or 'main'} was not found ({type(e).__name__})"
            ) from None
