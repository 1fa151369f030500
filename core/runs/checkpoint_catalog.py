"""A run's checkpoints after training: list, show, delete and pick the best by a metric; and
checkpoints saved by name under a folder (what ``galley serve`` keeps per training run), found
by their manifests.

Everything reads what runs wrote through the ports: the run's record (``run.json``), its
checkpoint index, each checkpoint's manifest, and its metric rows. Deleting takes the run's
lock, so it never races a run that is training (or resuming), and rewrites the index before
removing any blob, so the index never names a deleted checkpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from galley.core.adapter_set import Adapters
from galley.core.domain.types import CheckpointRef
from galley.core.errors import ConfigError, GalleyError, Hint, LockedError, NotFoundError, Remedy
from galley.core.keys import join_key
from galley.core.runs.checkpoint_index import delete_checkpoint, read_index, write_index
from galley.core.runs.layout import RECORD_NAME, RunPaths
from galley.core.runs.manifest import (
    MANIFEST_NAME,
    CorruptCheckpointError,
    checkpoint_at,
    read_checkpoint,
    read_manifest,
)
from galley.core.runs.records import CheckpointRecord
from galley.core.runs.run_record import RunInUseError, read_run_record
from galley.ports.blobs import BlobStore


@attrs.frozen
class RunInfo:
    """A run as listed; ``problem`` says why its record or index cannot be read (the run is
    still listed, so one damaged run does not hide the others)."""

    run_id: str
    workflow: str
    started: float  # when the run was first recorded (seconds since the epoch; 0: unknown)
    checkpoints: int
    newest_step: int | None
    problem: str | None = None


@attrs.frozen
class CheckpointInfo:
    """One checkpoint of a run: where its state is, how big it is, whether its blobs match
    its manifest (None: not checked), its sampler weights if saved, and the run's metrics at
    its step."""

    run_id: str
    step: int
    key: str
    size: int
    verified: bool | None = None
    problem: str | None = None  # why it does not verify
    sampler: str | None = None
    metrics: Mapping[str, float] = attrs.field(factory=dict)


def list_runs(adapters: Adapters, output: str = "runs") -> list[RunInfo]:
    """Every run with a record under ``output``, oldest first."""
    ids = sorted(
        {k.split("/")[-2] for k in adapters.blobs.list(output) if k.endswith(f"/{RECORD_NAME}")}
    )
    runs = []
    for run_id in ids:
        try:
            record = read_run_record(adapters, output, run_id)
            if record is None:
                continue
            index = read_index(adapters.blobs, RunPaths(output, run_id))
        except GalleyError as e:
            runs.append(RunInfo(run_id, "?", 0.0, 0, None, problem=str(e)))
            continue
        newest = index[-1].step if index else None
        runs.append(RunInfo(run_id, record.workflow, record.created, len(index), newest))
    return sorted(runs, key=lambda r: (r.started, r.run_id))


def _index(adapters: Adapters, output: str, run_id: str) -> list[CheckpointRecord]:
    if read_run_record(adapters, output, run_id) is None:
        raise NotFoundError(f"run {run_id!r} has no record under {output!r}")
    return read_index(adapters.blobs, RunPaths(output, run_id))


def _size(blobs: BlobStore, key: str) -> int:
    try:
        return sum(
            f.size for f in read_manifest(blobs, join_key(key, MANIFEST_NAME)).files.values()
        )
    except GalleyError:
        return 0


def metrics_by_step(adapters: Adapters, run_id: str) -> dict[int, dict[str, float]]:
    """Each step's metrics (every stream's rows at that step, merged)."""
    read = getattr(adapters.metrics, "read", None)
    by_step: dict[int, dict[str, float]] = {}
    for row in read(run_id) if callable(read) else []:
        by_step.setdefault(row.step, {}).update(row.metrics)
    return by_step


def _info(
    adapters: Adapters,
    run_id: str,
    record: CheckpointRecord,
    metrics: Mapping[int, Mapping[str, float]],
) -> CheckpointInfo:
    sampler = record.sampler.key if record.sampler is not None else None
    return CheckpointInfo(
        run_id,
        record.step,
        record.state.key,
        _size(adapters.blobs, record.state.key),
        sampler=sampler,
        metrics=dict(metrics.get(record.step, {})),
    )


def list_checkpoints(adapters: Adapters, run_id: str, output: str = "runs") -> list[CheckpointInfo]:
    """The run's indexed checkpoints, oldest first, with their metrics (not verified)."""
    metrics = metrics_by_step(adapters, run_id)
    return [_info(adapters, run_id, r, metrics) for r in _index(adapters, output, run_id)]


def checkpoint_record(
    index: Sequence[CheckpointRecord], run_id: str, step: int | None
) -> CheckpointRecord:
    """The index entry at ``step`` (the newest without it), refused naming the steps there are."""
    if not index:
        raise NotFoundError(f"run {run_id!r} has no checkpoint")
    if step is None:
        return index[-1]
    for record in index:
        if record.step == step:
            return record
    steps = ", ".join(str(r.step) for r in index)
    raise NotFoundError(f"run {run_id!r} has no checkpoint at step {step} (it has steps {steps})")


def _verified(adapters: Adapters, record: CheckpointRecord) -> tuple[bool, str | None]:
    try:
        read_checkpoint(adapters.blobs, record.state)
    except CorruptCheckpointError as e:
        return False, str(e)
    return True, None


def show_checkpoint(
    adapters: Adapters, run_id: str, step: int | None = None, output: str = "runs"
) -> CheckpointInfo:
    """One checkpoint (the newest without ``step``), its blobs checked against its manifest."""
    record = checkpoint_record(_index(adapters, output, run_id), run_id, step)
    verified, problem = _verified(adapters, record)
    info = _info(adapters, run_id, record, metrics_by_step(adapters, run_id))
    return attrs.evolve(info, verified=verified, problem=problem)


def delete_checkpoint_at(
    adapters: Adapters, run_id: str, step: int, *, force: bool = False, output: str = "runs"
) -> CheckpointInfo:
    """Delete the checkpoint at ``step`` (state and sampler weights): refused while the run is
    in use, and for the newest checkpoint that verifies (what a resume loads) unless
    ``force``."""
    key = RunPaths(output, run_id).lock
    try:
        held = adapters.blobs.lock(key, f"galley checkpoints delete {run_id}:{step}")
    except LockedError as e:
        raise RunInUseError(
            f"run {run_id!r} is in use by {e.holder}; delete its checkpoints once it ends"
        ) from None
    try:
        index = _index(adapters, output, run_id)
        record = checkpoint_record(index, run_id, step)
        newest_good = next((r for r in reversed(index) if _verified(adapters, r)[0]), None)
        if record is newest_good and not force:
            raise ConfigError(
                f"step {step} is run {run_id!r}'s newest good checkpoint, the one a resume loads; "
                "delete it anyway with force=True"
            ).with_hints(Hint(Remedy.FORCE))
        info = _info(adapters, run_id, record, {})
        write_index(adapters.blobs, RunPaths(output, run_id), [r for r in index if r is not record])
        delete_checkpoint(adapters.blobs, record.state)
        if record.sampler is not None:
            delete_checkpoint(adapters.blobs, record.sampler)
        return info
    finally:
        held.release()


def best_checkpoint(
    adapters: Adapters, run_id: str, metric: str, *, maximize: bool = False, output: str = "runs"
) -> CheckpointInfo:
    """The checkpoint whose step has the lowest ``metric`` (highest with ``maximize``),
    among the steps that recorded it."""
    candidates = [c for c in list_checkpoints(adapters, run_id, output) if metric in c.metrics]
    if not candidates:
        raise NotFoundError(
            f"no checkpoint step of run {run_id!r} recorded {metric!r}: evaluate at the "
            "checkpoint steps (eval_every) or name another metric"
        )
    pick = max if maximize else min
    return pick(candidates, key=lambda c: c.metrics[metric])


@attrs.frozen
class SavedCheckpoint:
    """A complete checkpoint found under a folder: what its manifest says and its size."""

    ref: CheckpointRef
    size: int


def saved_checkpoints(blobs: BlobStore, folder: str) -> list[SavedCheckpoint]:
    """Every checkpoint with a readable manifest under ``folder``, by key. One without (a save
    that failed part-way, or being deleted) is not complete, so it is not offered."""
    found = []
    for key in blobs.list(folder):
        head, _, name = key.rpartition("/")
        if name != MANIFEST_NAME:
            continue
        try:
            ref = checkpoint_at(blobs, head)
        except (GalleyError, ValueError):
            continue
        found.append(SavedCheckpoint(ref, _size(blobs, head)))
    return found


def delete_saved_checkpoint(blobs: BlobStore, key: str) -> SavedCheckpoint:
    """Delete the checkpoint stored under ``key`` (manifest first, so a reader never trusts a
    half-deleted one); a key holding none is ``NotFoundError``."""
    saved = SavedCheckpoint(checkpoint_at(blobs, key), _size(blobs, key))
    delete_checkpoint(blobs, saved.ref)
    return saved


__all__ = [
    "CheckpointInfo",
    "RunInfo",
    "SavedCheckpoint",
    "delete_saved_checkpoint",
    "saved_checkpoints",
    "best_checkpoint",
    "delete_checkpoint_at",
    "list_checkpoints",
    "list_runs",
    "show_checkpoint",
]
