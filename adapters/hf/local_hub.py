"""A hub that is a local folder of repos: ``<root>/<org>/<name>/...`` (no network)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from galley.core.errors import NotFoundError, ValidationError


class LocalDirectoryHub:
    """Repos are folders under ``root``; ``revision`` must be None or "main" (a folder has one)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _repo(self, repo_id: str, revision: str | None) -> Path:
        parts = repo_id.split("/")
        if not repo_id or len(parts) > 2 or any(p in {"", ".", ".."} for p in parts):
            raise ValidationError("repo_id", f"{repo_id!r} is not a repo id like 'org/name'")
        if revision not in (None, "main"):
            raise NotFoundError(
                f"local repo {repo_id!r} has only revision 'main', not {revision!r}"
            )
        path = self.root / repo_id
        if not path.is_dir():
            raise NotFoundError(f"no repo {repo_id!r} in local hub {str(self.root)!r}")
        return path

    def list_files(self, repo_id: str, revision: str | None = None) -> list[str]:
        repo = self._repo(repo_id, revision)
        return sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())

    def download(self, repo_id: str, filename: str, revision: str | None = None) -> Path:
        repo = self._repo(repo_id, revision)
        path = (repo / filename).resolve()
        if not path.is_relative_to(repo.resolve()) or not path.is_file():
            raise NotFoundError(f"repo {repo_id!r} has no file {filename!r}")
        return path

    def snapshot(
        self, repo_id: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None
    ) -> Path:
        repo = self._repo(repo_id, revision)
        if allow_patterns is not None and not any(
            fnmatch.fnmatch(f, p) for f in self.list_files(repo_id) for p in allow_patterns
        ):
            raise NotFoundError(f"repo {repo_id!r} has no file matching {list(allow_patterns)}")
        return repo  # already local: the whole folder is the snapshot


class FallbackHub:
    """Asks ``first`` (say, the embedded models), then ``second`` (say, the Hugging Face Hub)
    for repos the first does not have."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def _either(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.first, method)(*args, **kwargs)
        except NotFoundError:
            return getattr(self.second, method)(*args, **kwargs)

    def download(self, repo_id: str, filename: str, revision: str | None = None) -> Path:
        result: Path = self._either("download", repo_id, filename, revision)
        return result

    def snapshot(
        self, repo_id: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None
    ) -> Path:
        result: Path = self._either("snapshot", repo_id, revision, allow_patterns)
        return result

    def list_files(self, repo_id: str, revision: str | None = None) -> list[str]:
        result: list[str] = self._either("list_files", repo_id, revision)
        return result
