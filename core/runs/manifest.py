"""Checkpoint manifests: which blobs make up a checkpoint, with their sizes and SHA-256.

An adapter writes every blob first and the manifest last, so a manifest only exists for a
complete checkpoint; a reader checks that the manifest is the checkpoint it asked for (kind,
run, name and step) and verifies each blob against it before trusting the bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from galley.core.domain.types import CheckpointRef
from galley.core.errors import GalleyError, NotFoundError
from galley.core.keys import join_key
from galley.core.serialization import from_json, to_json

if TYPE_CHECKING:
    from galley.ports.blobs import BlobStore

MANIFEST_NAME = "manifest.json"


class CorruptCheckpointError(GalleyError):
    """A checkpoint blob is missing, truncated or altered; the message names the blob."""


class CheckpointMismatchError(CorruptCheckpointError):
    """A checkpoint that verifies but is not the one asked for: its manifest names another
    run, step or name (a folder copied over another, an index line pointing elsewhere). As
    unusable as a corrupt one, so whoever falls back past corrupt checkpoints does here too."""


@attrs.frozen
class BlobDigest:
    size: int
    sha256: str


@attrs.frozen
class Manifest:
    kind: str
    name: str
    run_id: str
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
    run_id: str,
    step: int,
    files: Mapping[str, bytes],
    meta: Mapping[str, str] | None = None,
    written: Mapping[str, BlobDigest] | None = None,
) -> Manifest:
    """Write ``files`` under ``prefix``, then the manifest naming them and ``written``, files
    already under ``prefix`` (another process wrote them) with their digests."""
    for filename, data in files.items():
        blobs.write(join_key(prefix, filename), data)
    manifest = Manifest(
        kind,
        name,
        run_id,
        step,
        {**(written or {}), **{filename: digest(data) for filename, data in files.items()}},
        dict(meta or {}),
    )
    blobs.write(join_key(prefix, MANIFEST_NAME), to_json(manifest).encode())
    return manifest


def read_checkpoint(blobs: BlobStore, ref: CheckpointRef) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest of the checkpoint ``ref`` names and every blob it lists, each verified.
    Raises CheckpointMismatchError if the manifest is another checkpoint's, and
    CorruptCheckpointError if it or a blob is missing or altered."""
    prefix = ref.key
    key = join_key(prefix, MANIFEST_NAME)
    manifest = read_manifest(blobs, key)
    check_identity(manifest, ref)
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


def check_identity(manifest: Manifest, ref: CheckpointRef) -> None:
    """Refuse a manifest that is not the checkpoint ``ref`` names. The key is not compared:
    a checkpoint may be copied whole to another place and still be itself."""
    found = _describe(manifest.kind, manifest.run_id, manifest.name, manifest.step)
    asked = _describe(ref.kind, ref.run_id, ref.name, ref.step)
    if found != asked:
        raise CheckpointMismatchError(
            f"checkpoint {ref.key!r} holds {found}, not {asked} as asked; refusing to load it "
            "(was it copied over, or does an index point into another run?)"
        )


def _describe(kind: str, run_id: str, name: str, step: int) -> str:
    return f"{kind} {name!r} (step {step}) of run {run_id!r}"


def checkpoint_at(blobs: BlobStore, key: str) -> CheckpointRef:
    """The checkpoint stored under ``key``, as its manifest describes it (kind, run, name,
    step, base model): how a checkpoint given by its place is asked for."""
    try:
        manifest = read_manifest(blobs, join_key(key, MANIFEST_NAME))
    except CorruptCheckpointError as e:
        raise NotFoundError(f"{key!r} is not a checkpoint: {e}") from None
    return CheckpointRef(
        manifest.kind,  # type: ignore[arg-type]
        manifest.name,
        key,
        manifest.run_id,
        manifest.step,
        manifest.meta.get("base_model", ""),
    )


def read_manifest(blobs: BlobStore, key: str) -> Manifest:
    """The manifest stored at ``key``; CorruptCheckpointError when missing or unreadable."""
    try:
        return from_json(Manifest, blobs.read(key).decode())
    except (GalleyError, ValueError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(
            f"checkpoint manifest {key!r} is missing or unreadable: {e}"
        ) from e
