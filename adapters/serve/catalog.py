"""The RestClient's view of ``galley serve``: a tenant's training runs and their checkpoints,
listed from the run records and the checkpoints' manifests in the blob store, and deleted
through ``galley.core.runs.checkpoint_catalog`` (the record stops naming a checkpoint
before any of its blobs goes)."""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

import structlog
from tinker import types as tt

from galley.adapters.serve.errors import not_found
from galley.adapters.serve.runs import RunStore, ServedRun, TinkerPath
from galley.core.domain.types import CheckpointRef
from galley.core.errors import GalleyError
from galley.core.runs.checkpoint_catalog import delete_saved_checkpoint, saved_checkpoints
from galley.core.runs.manifest import checkpoint_at
from galley.ports.blobs import BlobStore

log = structlog.get_logger("galley.serve")


def to_json(model: Any) -> dict[str, Any]:
    """One of the SDK's pydantic messages as the JSON object it reads."""
    data: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return data


def _datetime(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


class RunCatalog:
    def __init__(self, blobs: BlobStore, runs: RunStore) -> None:
        self.blobs, self.runs = blobs, runs

    def checkpoint(self, tenant: str, path: TinkerPath) -> CheckpointRef:
        """The checkpoint ``path`` names in ``tenant``'s runs, as its manifest describes it."""
        key = self.runs.key_of(tenant, path)
        try:
            return checkpoint_at(self.blobs, key)
        except GalleyError:
            raise not_found(f"checkpoint {str(path)!r}") from None

    def _checkpoints(self, tenant: str, record: ServedRun) -> list[tt.Checkpoint]:
        """The run's checkpoints whose manifests are there, as its record names them."""
        on_disk = {
            s.ref.key: s
            for s in saved_checkpoints(self.blobs, self.runs.folder(tenant, record.training_run_id))
        }
        found = []
        for checkpoint_id, entry in sorted(record.saved.items(), key=lambda kv: kv[1].time):
            saved = on_disk.get(entry.key)
            if saved is None:
                continue
            path = TinkerPath(record.training_run_id, saved.ref.kind, checkpoint_id.split("/")[-1])
            found.append(
                tt.Checkpoint(
                    checkpoint_id=checkpoint_id,
                    checkpoint_type="training" if saved.ref.kind == "state" else "sampler",
                    time=_datetime(entry.time),
                    tinker_path=str(path),
                    size_bytes=saved.size,
                    user_metadata=entry.user_metadata or None,
                )
            )
        return found

    def _training_run(self, tenant: str, record: ServedRun) -> tt.TrainingRun:
        checkpoints = self._checkpoints(tenant, record)
        newest = {
            kind: next((c for c in reversed(checkpoints) if c.checkpoint_type == kind), None)
            for kind in ("training", "sampler")
        }
        return tt.TrainingRun(
            training_run_id=record.training_run_id,
            base_model=record.base_model,
            model_owner=tenant,
            is_lora=record.lora.rank > 0,
            lora_rank=record.lora.rank or None,
            last_request_time=_datetime(record.last_request or record.created),
            last_checkpoint=newest["training"],
            last_sampler_checkpoint=newest["sampler"],
            user_metadata=record.user_metadata or None,
        )

    def training_runs(self, tenant: str, limit: int, offset: int) -> dict[str, Any]:
        records = self.runs.runs(tenant)
        page = records[offset : offset + limit]
        return to_json(
            tt.TrainingRunsResponse(
                training_runs=[self._training_run(tenant, r) for r in page],
                cursor=tt.Cursor(offset=offset, limit=limit, total_count=len(records)),
            )
        )

    def training_run(self, tenant: str, run_id: str) -> dict[str, Any]:
        return to_json(self._training_run(tenant, self.runs.read(tenant, run_id)))

    def checkpoints(self, tenant: str, run_id: str) -> dict[str, Any]:
        record = self.runs.read(tenant, run_id)
        return to_json(tt.CheckpointsListResponse(checkpoints=self._checkpoints(tenant, record)))

    def user_checkpoints(self, tenant: str, limit: int, offset: int) -> dict[str, Any]:
        every = [c for r in self.runs.runs(tenant) for c in self._checkpoints(tenant, r)]
        every.sort(key=lambda c: c.time, reverse=True)
        return to_json(
            tt.CheckpointsListResponse(
                checkpoints=every[offset : offset + limit],
                cursor=tt.Cursor(offset=offset, limit=limit, total_count=len(every)),
            )
        )

    def delete_checkpoint(self, tenant: str, run_id: str, checkpoint_id: str) -> None:
        path = TinkerPath.parse(f"tinker://{run_id}/{checkpoint_id}")
        key = self.runs.key_of(tenant, path)
        self.runs.forget(tenant, path)  # the record stops naming it before any blob goes
        with contextlib.suppress(GalleyError):  # its manifest was gone already: nothing to offer
            delete_saved_checkpoint(self.blobs, key)
        log.info("checkpoint_deleted", path=str(path))

    def weights_info(self, tenant: str, tinker_path: str) -> dict[str, Any]:
        path = TinkerPath.parse(tinker_path)
        self.checkpoint(tenant, path)
        record = self.runs.read(tenant, path.run_id)
        lora = record.lora
        return to_json(
            tt.WeightsInfoResponse(
                base_model=record.base_model,
                is_lora=lora.rank > 0,
                lora_rank=lora.rank or None,
                train_attn=lora.train_attn,
                train_mlp=lora.train_mlp,
                train_unembed=lora.train_unembed,
            )
        )
