"""Checkpoint stages: save training state with an index entry; export sampler weights.

The index (``<output>/<run_id>/checkpoints.jsonl``) gets its line only after the state is
completely saved, so it never points at a partial checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from galley.core.batching import BatchPlan
from galley.core.engine import FunctionStage, StageContext, stage
from galley.core.keys import join_key
from galley.core.records import CheckpointRecord
from galley.core.serialization import from_data, to_data

if TYPE_CHECKING:
    from galley.ports.blobs import BlobStore
    from galley.ports.training import TrainingSession

INDEX_NAME = "checkpoints.jsonl"


def index_key(output: str, run_id: str) -> str:
    return join_key(output, run_id, INDEX_NAME)


def read_index(blobs: BlobStore, output: str, run_id: str) -> list[CheckpointRecord]:
    key = index_key(output, run_id)
    if not blobs.exists(key):
        return []
    lines = blobs.read(key).decode().splitlines()
    return [from_data(CheckpointRecord, json.loads(line)) for line in lines if line.strip()]


def append_index(blobs: BlobStore, output: str, run_id: str, record: CheckpointRecord) -> None:
    key = index_key(output, run_id)
    existing = blobs.read(key) if blobs.exists(key) else b""
    line = json.dumps(to_data(record), sort_keys=True).encode() + b"\n"
    blobs.write(key, existing + line)  # atomic: readers see the old or the new index


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_stage(name: str, at: str) -> FunctionStage:
    """Save the state after ``state[at]`` steps (skipped if that step is already saved)."""

    def run(
        ctx: StageContext,
        session: TrainingSession,
        batch_plan: BatchPlan,
        output: str,
        run_id: str,
        checkpoints: Sequence[CheckpointRecord],
        **position: int,
    ) -> dict[str, Any]:
        step = position[at]
        if checkpoints and checkpoints[-1].step == step:
            return {"checkpoints": checkpoints}
        ref = session.save_state(step_name(step)).result()
        record = CheckpointRecord(
            step_name(step), step, ref, batch_plan.position(step), time=time.time()
        )
        append_index(ctx.adapters.blobs, output, run_id, record)
        ctx.log.info("checkpoint.saved", step=step, key=ref.key)
        return {"checkpoints": (*checkpoints, record)}

    return FunctionStage(
        name,
        run,
        reads=("session", "batch_plan", "output", "run_id", "checkpoints", at),
        writes=("checkpoints",),
        ports=("training", "blobs"),
        doc=f"Save training state after `{at}` steps and add it to the checkpoint index.",
    )


@stage(reads=("session", "total_steps"), writes=("sampler",), ports=("training",))
def export_sampler(ctx: StageContext, session: TrainingSession, total_steps: int) -> dict[str, Any]:
    """Export the final weights for sampling (the LoRA adapter, for LoRA sessions)."""
    ref = session.save_weights_for_sampler("final").result()
    ctx.log.info("sampler.exported", key=ref.key, step=total_steps)
    return {"sampler": ref}
