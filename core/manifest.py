"""Checkpoint manifests: which blobs make up a checkpoint, with their sizes and SHA-256.

An adapter writes every blob first and the manifest last, so a manifest only exists for a
complete checkpoint; a reader verifies each blob against it before trusting the bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from galley.core.errors import GalleyError
from galley.core.keys import join_key
from galley.core.serialization import from_json, to_json

if TYPE_CHECKING:
    from galley.ports.blobs import BlobStore

MANIFEST_NAME = "manifest.json"


class CorruptCheckpointError(GalleyError):
    """A checkpoint blob is missing, truncated or altered; the message names the blob."""


@attrs.frozen
class BlobDigest:
    size: int
    sha256: str


@attrs.frozen
class Manifest:
    kind: str
    name: str
    step: int
    files: Mapping[str, BlobDigest]
    meta: Mapping[str, str] = attrs.field(factory=dict)


def digest(data: bytes) -> BlobDigest:
    return BlobDigest(len(data), hashlib.sha256(data).hexdigest())


def write_checkpoint(
    blobs: BlobStore,
    prefix: str,
    *,
    kind: str,
    name: str,
    step: int,
    files: Mapping[str, bytes],
    meta: Mapping[str, str] | None = None,
) -> Manifest:
    """Write ``files`` under ``prefix``, then the manifest naming them."""
    for filename, data in files.items():
        blobs.write(join_key(prefix, filename), data)
    manifest = Manifest(
        kind,
        name,
        step,
        {filename: digest(data) for filename, data in files.items()},
        dict(meta or {}),
    )
    blobs.write(join_key(prefix, MANIFEST_NAME), to_json(manifest).encode())
    return manifest


def read_checkpoint(blobs: BlobStore, prefix: str) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and every blob it names, each verified; raises CorruptCheckpointError."""
    key = join_key(prefix, MANIFEST_NAME)
    try:
        manifest = from_json(Manifest, blobs.read(key).decode())
    except (GalleyError, ValueError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(
            f"checkpoint manifest {key!r} is missing or unreadable: {e}"
        ) from e
    files = {}
    for name, expected in manifest.files.items():
        blob_key = join_key(prefix, name)
        try:
            data = blobs.read(blob_key)
        except GalleyError as e:
            raise CorruptCheckpointError(f"checkpoint blob {blob_key!r} is missing: {e}") from e
        actual = digest(data)
        if actual != expected:
            raise CorruptCheckpointError(
                f"checkpoint blob {blob_key!r} is corrupt: expected {expected.size} bytes with "
                f"sha256 {expected.sha256[:12]}..., "
                f"got {actual.size} bytes with sha256 {actual.sha256[:12]}..."
            )
        files[name] = data
    return manifest, files
