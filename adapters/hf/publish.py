"""Publishing files (``galley.core.runs.publish``) to a Hugging Face Hub repo, or to any fsspec
URL. The Hub token comes from ``HF_TOKEN`` (or huggingface_hub's own login), and is never
logged or printed."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import fsspec
from huggingface_hub import CommitOperationAdd, HfApi

from galley.adapters.helpers.redaction import redact_text
from galley.core.errors import ConfigError, ServiceError

# The Hub's rule for a repo id: USER/NAME, each of letters, digits, '-', '_' and '.', not
# starting or ending with '-' or '.', with no '--' or '..', at most 96 characters.
REPO_PART = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?$")


def check_repo(repo: str) -> None:
    """A Hub model repo id, USER/NAME: refused before anything is exported."""
    parts = repo.split("/")
    if len(parts) != 2 or not all(REPO_PART.match(p) for p in parts):
        raise ConfigError(
            f"--repo {repo!r} is not a Hub repo id like USER/NAME (letters, digits, '-', '_' "
            "and '.' in each part)"
        )


def open_target(url: str, **storage_options: Any) -> tuple[Any, str]:
    """The filesystem and root of ``--to``: refused before anything is exported when fsspec
    cannot open it, or when it is a file."""
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
    except (ImportError, ValueError, TypeError) as e:
        raise ConfigError(f"--to {url!r} is not a usable fsspec URL: {e}") from None
    root = root.rstrip("/")
    try:
        is_file = fs.isfile(root)
    except Exception as e:  # the store's own errors (no credentials, no network)
        raise ServiceError(f"--to {url!r} cannot be reached: {redact_text(str(e))}") from None
    if is_file:
        raise ConfigError(f"--to {url!r} is a file; expected a folder")
    return fs, root


def existing(fs: Any, root: str, names: list[str]) -> list[str]:
    """Which of ``names`` are already under ``root``."""
    return [name for name in names if fs.exists(f"{root}/{name}")]


def push_to_hub(
    files: Mapping[str, bytes], repo: str, *, private: bool = False, message: str = ""
) -> str:
    """Create ``repo`` (a model repo; kept if it exists) and commit ``files`` to it in one
    commit; the commit's URL. ``HF_ENDPOINT`` points at another Hub."""
    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=os.environ.get("HF_TOKEN"))
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        operations = [CommitOperationAdd(path, data) for path, data in sorted(files.items())]
        info = api.create_commit(repo, operations, commit_message=message or "Upload from galley")
    except Exception as e:  # the Hub's refusals and the network's failures, in one voice
        where = endpoint or "the Hugging Face Hub"
        raise ServiceError(
            f"pushing to {repo!r} on {where} failed: {type(e).__name__}: {redact_text(str(e))}"
        ) from None
    return str(info.commit_url)


def write_to_url(
    files: Mapping[str, bytes], url: str, *, force: bool = False, **storage_options: Any
) -> list[str]:
    """Write ``files`` under the fsspec ``url`` (a folder, s3://bucket/prefix, ...). A file
    already there (a README of the user's own) is never overwritten without ``force``: the
    refusal lists them all and writes nothing."""
    fs, root = open_target(url, **storage_options)
    there = existing(fs, root, sorted(files))
    if there and not force:
        raise ConfigError(
            f"--to {url!r} already has {', '.join(there)}; give --force to overwrite them"
        )
    written = []
    try:
        for path, data in sorted(files.items()):
            target = f"{root}/{path}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(target, "wb") as f:
                f.write(data)
            written.append(target)
    except OSError as e:
        raise ServiceError(
            f"writing under {url!r} failed after {len(written)} of {len(files)} files: "
            f"{redact_text(str(e))}"
        ) from None
    return written
