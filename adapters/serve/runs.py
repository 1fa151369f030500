"""Training runs as ``galley serve`` keeps them, and the ``tinker://`` paths that name their
checkpoints.

A run lives in its own folder of the blob store, inside its tenant's folder:
``<root>/<tenant>/<run>/``, holding ``training_run.json`` (what it trains, and each saved
checkpoint's key and time) and the checkpoints the training adapter writes there. A path
``tinker://<run>/weights/<name>`` (a training state) or ``tinker://<run>/sampler_weights/<name>``
is looked up in the caller's tenant folder only, so another tenant's run is simply not found,
and a name is one plain path segment, so no path leaves its run's folder."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Literal

import attrs

from galley.adapters.serve.errors import bad_request, not_found
from galley.core.domain.types import LoraConfig
from galley.core.errors import GalleyError, NotFoundError
from galley.core.keys import check_name, join_key
from galley.core.serialization import converter
from galley.ports.blobs import BlobStore

RECORD = "training_run.json"
SEGMENTS: Mapping[str, Literal["state", "sampler"]] = {
    "weights": "state",
    "sampler_weights": "sampler",
}
SEGMENT_OF = {kind: segment for segment, kind in SEGMENTS.items()}


def run_key(run_id: str) -> str:
    """The folder name of a run id (model ids read ``<session>:train:<n>``)."""
    try:
        return check_name(run_id.replace(":", "-"), "training run id")
    except (GalleyError, AttributeError):
        raise not_found(f"training run {run_id!r}") from None


def checkpoint_name(name: str | None, field: str) -> str:
    try:
        return check_name(name or "", field)
    except GalleyError as e:
        raise bad_request(str(e)) from None


@attrs.frozen
class TinkerPath:
    run_id: str
    kind: Literal["state", "sampler"]
    name: str

    @classmethod
    def parse(cls, path: str) -> TinkerPath:
        head, _, rest = path.partition("tinker://")
        parts = rest.split("/")
        if head or len(parts) != 3 or parts[1] not in SEGMENTS:
            raise bad_request(
                f"{path!r} is not a checkpoint path: expected tinker://RUN/weights/NAME or "
                "tinker://RUN/sampler_weights/NAME"
            )
        run_key(parts[0])
        return cls(parts[0], SEGMENTS[parts[1]], checkpoint_name(parts[2], "checkpoint name"))

    @property
    def checkpoint_id(self) -> str:
        return f"{SEGMENT_OF[self.kind]}/{self.name}"

    def __str__(self) -> str:
        return f"tinker://{self.run_id}/{self.checkpoint_id}"


@attrs.frozen
class SavedEntry:
    key: str
    time: float
    user_metadata: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class ServedRun:
    """What the server keeps of one Tinker training run of a tenant: its model and LoRA,
    its named saves, and when it was last asked for anything (a run of galley's own workflows
    is a ``galley.core.runs.run_record.RunRecord``)."""

    training_run_id: str
    base_model: str
    lora: LoraConfig
    created: float
    user_metadata: dict[str, str] = attrs.field(factory=dict)
    saved: dict[str, SavedEntry] = attrs.field(factory=dict)  # by checkpoint id
    last_request: float = 0.0


def run_folder(root: str, tenant: str, run_id: str) -> str:
    return join_key(root, tenant, run_key(run_id))


class RunStore:
    """The tenant-scoped run records in the blob store."""

    def __init__(self, blobs: BlobStore, root: str) -> None:
        self.blobs, self.root = blobs, root
        self._lock = threading.Lock()  # one read-modify-write of a record at a time

    def folder(self, tenant: str, run_id: str) -> str:
        return run_folder(self.root, tenant, run_id)

    def write(self, tenant: str, record: ServedRun) -> None:
        data = json.dumps(converter.unstructure(record), indent=1, sort_keys=True).encode()
        self.blobs.write(join_key(self.folder(tenant, record.training_run_id), RECORD), data)

    def read(self, tenant: str, run_id: str) -> ServedRun:
        key = join_key(self.folder(tenant, run_id), RECORD)
        try:
            return converter.structure(json.loads(self.blobs.read(key)), ServedRun)
        except NotFoundError:
            raise not_found(f"training run {run_id!r}") from None

    def runs(self, tenant: str) -> list[ServedRun]:
        keys = [k for k in self.blobs.list(join_key(self.root, tenant)) if k.endswith(f"/{RECORD}")]
        records = []
        for key in keys:
            try:
                records.append(converter.structure(json.loads(self.blobs.read(key)), ServedRun))
            except (GalleyError, ValueError):
                continue  # a record being replaced, or not one of ours: not listed
        return sorted(records, key=lambda r: r.created)

    def record_saved(
        self, tenant: str, path: TinkerPath, key: str, user_metadata: Mapping[str, str]
    ) -> None:
        with self._lock:
            record = self.read(tenant, path.run_id)
            entry = SavedEntry(key, time.time(), dict(user_metadata))
            saved = {**record.saved, path.checkpoint_id: entry}
            self.write(tenant, attrs.evolve(record, saved=saved, last_request=time.time()))

    def forget(self, tenant: str, path: TinkerPath) -> None:
        with self._lock:
            record = self.read(tenant, path.run_id)
            saved = {k: v for k, v in record.saved.items() if k != path.checkpoint_id}
            self.write(tenant, attrs.evolve(record, saved=saved))

    def key_of(self, tenant: str, path: TinkerPath) -> str:
        entry = self.read(tenant, path.run_id).saved.get(path.checkpoint_id)
        if entry is None:
            raise not_found(f"checkpoint {str(path)!r}")
        return entry.key
