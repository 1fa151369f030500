"""A run's checkpoint index: one JSON line a good checkpoint, oldest first.

The index gets a checkpoint's line only after its state (and its manifest) is written, and
is rewritten whole (atomically) before any checkpoint it drops is deleted, so it never names
a checkpoint that is not there."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from galley.core.errors import GalleyError
from galley.core.keys import has_scheme, join_key
from galley.core.runs.layout import RunPaths
from galley.core.runs.manifest import MANIFEST_NAME
from galley.core.runs.records import CheckpointRecord
from galley.core.serialization import from_data, to_data

if TYPE_CHECKING:
    from galley.core.domain.types import CheckpointRef
    from galley.ports.blobs import BlobStore


def read_index(blobs: BlobStore, paths: RunPaths) -> list[CheckpointRecord]:
    """The index's entries, oldest first. Lines that don't parse (a torn write on a store
    without atomic writes) are skipped: every entry before them is still trusted, and each
    entry's checkpoint is verified against its manifest when loaded."""
    key = paths.index
    if not blobs.exists(key):
        return []
    records = []
    for line in blobs.read(key).decode(errors="replace").splitlines():
        try:
            records.append(from_data(CheckpointRecord, json.loads(line)))
        except (ValueError, GalleyError):
            continue
    return records


def write_index(blobs: BlobStore, paths: RunPaths, records: Sequence[CheckpointRecord]) -> None:
    lines = b"".join(json.dumps(to_data(r), sort_keys=True).encode() + b"\n" for r in records)
    blobs.write(paths.index, lines)  # atomic: readers see the old index or the new one


def delete_checkpoint(blobs: BlobStore, ref: CheckpointRef) -> None:
    """Manifest first: a checkpoint without one is incomplete, never half-trusted. One kept
    by a service (a key with a scheme, such as ``tinker://``) is not in the blob store: it is
    left where it is, for the service's own tools to delete."""
    if has_scheme(ref.key):
        return
    manifest = join_key(ref.key, MANIFEST_NAME)
    blobs.delete(manifest)
    for key in blobs.list(ref.key):
        blobs.delete(key)
