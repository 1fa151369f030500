"""Checkpoint stages: save training state with an index entry; export sampler weights.

The index (``<output>/<run_id>/checkpoints.jsonl``) gets its line only after the state is
completely saved, so it never points at a partial checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from galley.core.domain.batching import BatchPlan
from galley.core.domain.types import ModelRef
from galley.core.domain.weights_source import SourceForm, WeightsSource
from galley.core.engine import FunctionStage, StageContext, reads_of, stage
from galley.core.errors import ConfigError, Hint, NotFoundError, Remedy, ValidationError
from galley.core.runs.checkpoint_index import delete_checkpoint, read_index, write_index
from galley.core.runs.layout import RunPaths
from galley.core.runs.manifest import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    checkpoint_at,
)
from galley.core.runs.records import CheckpointRecord
from galley.core.runs.registry import resolve_start
from galley.core.runs.retention import steps_to_drop
from galley.core.runs.run_record import (
    RunRecord,
    metrics_reader,
    plain_saved_settings,
    read_run_record,
    write_run_record,
)
from galley.core.runs.tracking import open_tracked_run
from galley.core.sections import BaseModelSection, CheckpointSection, EvalSection, ModelSection
from galley.core.stages.sample import EvaluatedWeights

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_stage(name: str, at: str) -> FunctionStage:
    """Save the state after ``state[at]`` steps (skipped if that step is already saved), with
    sampler weights under ``checkpoint_sampler``, add it to the index, then drop what the
    retention settings let go (``galley.core.runs.retention``): the index is rewritten before any
    blob is deleted, so it never names a deleted one."""

    def run(
        ctx: StageContext,
        session: TrainingSession,
        batch_plan: BatchPlan,
        paths: RunPaths,
        saved_checkpoints: Sequence[CheckpointRecord],
        checkpoints: CheckpointSection,
        **position: int,
    ) -> dict[str, Any]:
        step = position[at]
        if saved_checkpoints and saved_checkpoints[-1].step == step:
            return {"saved_checkpoints": saved_checkpoints}
        ref = ctx.wait(session.save_state(step_name(step)), "training.save_state")
        sampler = None
        if checkpoints.checkpoint_sampler:
            saving = session.save_weights_for_sampler(step_name(step))
            sampler = ctx.wait(saving, "training.save_weights_for_sampler")
        record = CheckpointRecord(
            step_name(step), step, ref, batch_plan.position(step), sampler, time=time.time()
        )
        # A resume continues after the newest index entry with the metrics stored up to it:
        # rows a store still buffers must be durable before the entry exists.
        ctx.flush_metrics()
        saved = [*saved_checkpoints, record]
        keep = checkpoints
        scores = step_scores(ctx, paths.run_id, keep.keep_metric) if keep.keep_best else {}
        steps = [r.step for r in saved]
        drop = set(
            steps_to_drop(steps, keep.keep_checkpoints, keep.keep_best, scores, keep.keep_max)
        )
        kept = [r for r in saved if r.step not in drop]
        dropped = [r for r in saved if r.step in drop]
        write_index(ctx.adapters.blobs, paths, kept)
        for old in dropped:
            delete_checkpoint(ctx.adapters.blobs, old.state)
            if old.sampler is not None:
                delete_checkpoint(ctx.adapters.blobs, old.sampler)
        ctx.log.info("checkpoint.saved", step=step, key=ref.key, dropped=[d.step for d in dropped])
        return {"saved_checkpoints": tuple(kept)}

    return FunctionStage(
        name,
        run,
        reads=reads_of(run, (at,)),
        writes=("saved_checkpoints",),
        ports=("training", "blobs"),
        doc=f"Save training state after `{at}` steps and add it to the checkpoint index.",
    )


def step_scores(ctx: StageContext, run_id: str, metric: str) -> dict[int, float]:
    """Each step's ``metric`` as the run recorded it (its latest row at that step)."""
    reader = metrics_reader(ctx.adapters)
    if reader is None:
        raise ConfigError(
            "keep_best ranks checkpoints by recorded metrics, and this metrics store cannot "
            "read rows back; choose one that can (jsonl, sqlite) or leave keep_best 0"
        )
    return {r.step: float(r.metrics[metric]) for r in reader.read(run_id) if metric in r.metrics}


def check_entry(record: CheckpointRecord, run_id: str) -> None:
    """Refuse an index entry whose checkpoint ref is not this run's at the entry's step."""
    ref = record.state
    if ref.run_id != run_id or ref.step != record.step:
        raise CheckpointMismatchError(
            f"index entry {record.name!r} (step {record.step}) of run {run_id!r} points at "
            f"{ref.key!r}, a checkpoint of run {ref.run_id!r} at step {ref.step}"
        )


@stage(
    writes=("start_step", "saved_checkpoints", "evaluated_at"),
    ports=("training", "blobs"),
    replaces=("start_step",),  # the config's 0
)
def resume_from_checkpoint(
    ctx: StageContext,
    session: TrainingSession,
    paths: RunPaths,
    resume: bool,
    evaluation: EvalSection,
    total_steps: int,
) -> dict[str, Any]:
    """When resuming, load the newest checkpoint that verifies and is this run's (falling
    back past corrupt, missing or mismatched ones) and continue after its step; otherwise, or
    when no checkpoint was written yet, start at step 0. A checkpoint past the run's last step
    is refused; one at it leaves only the stages after training to run. The start is
    evaluated only where an uninterrupted run evaluates (step 0, on the eval schedule, or the
    last step)."""
    fresh = {"start_step": 0, "saved_checkpoints": (), "evaluated_at": -1}
    if not resume:
        return fresh
    run_id = paths.run_id
    index = read_index(ctx.adapters.blobs, paths)
    if not index:
        ctx.log.warning("run.restarted", reason=f"no checkpoint in {paths.index!r}")
        return fresh
    i = load_newest(ctx, session, index, run_id)
    record = index[i]
    if record.step > total_steps:
        raise ValidationError(
            "total steps",
            f"run {run_id!r} is to end at step {total_steps}, but its checkpoint "
            f"{record.state.key!r} is already at step {record.step}; a run cannot resume "
            "below its checkpoint (give the saved max_steps, or more)",
        )
    ctx.log.info("run.resumed", step=record.step, key=record.state.key)
    eval_every = evaluation.eval_every
    on_schedule = eval_every > 0 and record.step % eval_every == 0
    return {
        "start_step": record.step,
        "saved_checkpoints": tuple(index[: i + 1]),
        "evaluated_at": -1 if on_schedule or record.step == total_steps else record.step,
    }


def load_newest(
    ctx: StageContext,
    session: TrainingSession,
    index: Sequence[CheckpointRecord],
    run_id: str,
    *,
    weights_only: bool = False,
) -> int:
    """Load into ``session`` the newest checkpoint of ``index`` that verifies and is run
    ``run_id``'s (falling back past corrupt, missing or mismatched ones); its position.
    ``weights_only``: its weights alone, the optimizer starting anew (``load_weights``)."""
    load, call = (
        (session.load_weights, "training.load_weights")
        if weights_only
        else (session.load_state, "training.load_state")
    )
    problems = []
    for i in range(len(index) - 1, -1, -1):
        record = index[i]
        try:
            check_entry(record, run_id)
            ctx.wait(load(record.state), call)
        except CorruptCheckpointError as error:
            ctx.log.warning("checkpoint.unusable", step=record.step, error=str(error))
            problems.append(f"step {record.step}: {error}")
            continue
        return i
    raise CorruptCheckpointError(
        f"run {run_id!r}: none of its {len(index)} checkpoints is usable ({'; '.join(problems)})"
    )


def load_init_from(
    ctx: StageContext, session: TrainingSession, start: WeightsSource, paths: RunPaths
) -> None:
    """Load ``start``'s weights into ``session``: a run under ``output`` (its newest good
    checkpoint), the key of a state checkpoint or sampler weights (a LoRA adapter), or
    ``registry:NAME`` (the checkpoint a registered model names). Weights only."""
    output, run_id = paths.output, paths.run_id
    start = resolve_start(ctx.adapters, start, output)
    if start.form is not SourceForm.NAME:  # a checkpoint's key, in the store or a service's
        ref = checkpoint_at(ctx.adapters.blobs, start.text)
        ctx.wait(session.load_weights(ref), "training.load_weights")
        ctx.log.info("run.initialised", init_from=start.text, run=ref.run_id, step=ref.step)
        return
    if start.text == run_id:
        raise ValidationError("init_from", f"run {run_id!r} cannot start from itself")
    source = RunPaths(output, start.text)
    index = read_index(ctx.adapters.blobs, source)
    if not index:
        raise NotFoundError(f"init_from: run {start.text!r} has no checkpoint in {source.index!r}")
    record = index[load_newest(ctx, session, index, start.text, weights_only=True)]
    ctx.log.info("run.initialised", init_from=start.text, step=record.step, key=record.state.key)


@stage(ports=("training", "blobs"))
def init_weights(
    ctx: StageContext,
    session: TrainingSession,
    model: ModelSection,
    paths: RunPaths,
    start_step: int,
) -> dict[str, Any]:
    """Start a new run from other weights (``init_from``, see ``load_init_from``); the
    optimizer starts anew. A resumed run has its own."""
    if model.init_from and start_step == 0:
        load_init_from(ctx, session, model.init_from, paths)
    return {}


# The settings a checkpoint's weights depend on: an evaluation must start its session alike.
WEIGHT_SHAPING = ("base_model", "lora_rank", "lora_alpha")


@stage(
    writes=("evaluated",),
    ports=("training", "blobs"),
)
def load_run_weights(
    ctx: StageContext,
    session: TrainingSession,
    from_run: str | None,
    paths: RunPaths,
    model: BaseModelSection,
) -> dict[str, Any]:
    """Evaluate run ``from_run`` (under ``output``): load its newest checkpoint that verifies
    and export those weights for sampling. Refused, naming the setting, when the run trained
    another base model or LoRA shape than this session has. No ``from_run``: the base model."""
    if not from_run:
        return {"evaluated": EvaluatedWeights(ModelRef(model.base_model), 0)}
    output = paths.output
    record = read_run_record(ctx.adapters, output, from_run)
    if record is None:
        raise NotFoundError(f"run {from_run!r} has no record under {output!r}: nothing to evaluate")
    given = attrs.asdict(model)
    saved = plain_saved_settings(record)
    for field in WEIGHT_SHAPING:
        if field in saved and saved[field] != given[field]:
            raise ConfigError(
                f"run {from_run!r} trained with {field} {saved[field]!r}, this "
                f"evaluation has {given[field]!r}; give the run's"
            ).with_hints(Hint(Remedy.SET, setting=field, value=str(saved[field])))
    source = RunPaths(output, from_run)
    index = read_index(ctx.adapters.blobs, source)
    if not index:
        raise NotFoundError(f"run {from_run!r} has no checkpoint in {source.index!r}")
    checkpoint = index[load_newest(ctx, session, index, from_run)]
    name = f"{from_run}-step-{checkpoint.step}"
    sampler = ctx.wait(session.save_weights_for_sampler(name), "training.save_weights_for_sampler")
    ctx.log.info("run.weights_loaded", run=from_run, step=checkpoint.step, key=checkpoint.state.key)
    return {"evaluated": EvaluatedWeights(ModelRef(model.base_model, sampler), checkpoint.step)}


@stage(writes=("run_recorded",), ports=("blobs", "metrics"))
def save_run_record(
    ctx: StageContext, run_record: RunRecord, paths: RunPaths, resume: bool, start_step: int
) -> dict[str, Any]:
    """Before the run's first step: open it in the experiment trackers (a resume continues
    theirs) and save its settings, any change a resume made to them, and the trackers' ids."""
    record = open_tracked_run(
        ctx.adapters.metrics, run_record, resumed=resume, start_step=start_step
    )
    write_run_record(ctx.adapters, paths.output, record)
    return {"run_recorded": True}  # from here on, a failure has written something


@stage(writes=("sampler",), ports=("training",))
def export_sampler(ctx: StageContext, session: TrainingSession, total_steps: int) -> dict[str, Any]:
    """Export the final weights for sampling (the LoRA adapter, for LoRA sessions)."""
    ref = ctx.wait(session.save_weights_for_sampler("final"), "training.save_weights_for_sampler")
    ctx.log.info("sampler.exported", key=ref.key, step=total_steps)
    return {"sampler": ref}
