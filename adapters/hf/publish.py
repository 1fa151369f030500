"""Publishing files (``galley.core.publish``) to a Hugging Face Hub repo, or to any fsspec
URL. The Hub token comes from ``HF_TOKEN`` (or huggingface_hub's own login), and is never
logged or printed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import fsspec
from huggingface_hub import CommitOperationAdd, HfApi


def push_to_hub(
    files: Mapping[str, bytes], repo: str, *, private: bool = False, message: str = ""
) -> str:
    """Create ``repo`` (a model repo; kept if it exists) and commit ``files`` to it in one
    commit; the commit's URL. ``HF_ENDPOINT`` points at another Hub."""
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=os.environ.get("HF_TOKEN"))
    api.create_repo(repo, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path, data) for path, data in sorted(files.items())]
    info = api.create_commit(repo, operations, commit_message=message or "Upload from galley")
    return str(info.commit_url)


def write_to_url(files: Mapping[str, bytes], url: str, **storage_options: Any) -> list[str]:
    """Write ``files`` under the fsspec ``url`` (a folder, s3://bucket/prefix, ...)."""
    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    written = []
    for path, data in sorted(files.items()):
        target = f"{root.rstrip('/')}/{path}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(target, "wb") as f:
            f.write(data)
        written.append(target)
    return written
