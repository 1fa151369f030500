"""Supervised fine-tuning: the workflow, its config, and ``run``.

load_dataset -> start_session -> check_sampling -> render_dataset -> plan_training
-> resume_from_checkpoint -> save_run_record -> evaluate_base
train loop: forward_backward -> optim_step -> collect_results [-> evaluate] [-> checkpoint]
drain -> evaluate_final -> final_checkpoint -> export_sampler -> sample_answers
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import structlog

from galley.core.adapter_set import Adapters
from galley.core.chat import TrainOn
from galley.core.checks import (
    at_least,
    boolean,
    in_range,
    int_at_least,
    non_empty,
    one_of,
    safe_name,
)
from galley.core.engine import Every, Loop, Observer, RetryPolicy, Runner, Workflow
from galley.core.errors import ValidationError, WorkflowError
from galley.core.keys import check_prefix
from galley.core.records import EVAL, TRAIN, CheckpointRecord, RunOutcome
from galley.core.rendering import RENDERERS, Truncation
from galley.core.runs import claim_run, metrics_reader, resume_settings
from galley.core.schedules import ScheduleKind
from galley.core.serialization import from_data
from galley.core.stages import (
    SampleComparison,
    check_sampling,
    checkpoint_stage,
    collect_results,
    drain,
    evaluate_stage,
    export_sampler,
    forward_backward,
    load_dataset,
    optim_step,
    plan_training,
    render_dataset,
    resume_from_checkpoint,
    sample_answers,
    save_run_record,
    start_session,
)
from galley.core.tracking import end_tracked_run
from galley.core.types import CheckpointRef

DEFAULT_BASE_MODEL = "galley/tiny-lm"
DEFAULT_DATASET = "galley/tiny-instruct"


def _prefix(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    check_prefix(value, "SFTConfig.output")


def _truncation_from_truncate(v1: dict[str, Any]) -> dict[str, Any]:
    """Version 1 had ``truncate: bool``: true cut a long row's end, false refused it."""
    v2 = {k: v for k, v in v1.items() if k != "truncate"}
    v2["truncation"] = "keep_start" if v1.get("truncate", True) else "error"
    return v2


@attrs.frozen
class SFTConfig:
    """Everything an SFT run needs besides its adapters; every field has a default."""

    base_model: str = attrs.field(default=DEFAULT_BASE_MODEL, validator=non_empty)
    dataset: str = attrs.field(default=DEFAULT_DATASET, validator=non_empty)
    train_split: str = attrs.field(default="train", validator=non_empty)
    # When the dataset lacks it, eval_holdout train rows are held out.
    eval_split: str = attrs.field(default="test", validator=non_empty)
    eval_holdout: int = attrs.field(default=32, validator=int_at_least(0))
    max_steps: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(int_at_least(1))
    )
    num_epochs: int = attrs.field(default=4, validator=int_at_least(1))
    batch_size: int = attrs.field(default=8, validator=int_at_least(1))
    # Tuned for the embedded model's LoRA; billion-parameter models want about 1e-4 to 5e-4.
    learning_rate: float = attrs.field(default=3e-3, validator=at_least(0.0))
    lr_schedule: str = attrs.field(
        default="linear", validator=one_of([k.value for k in ScheduleKind])
    )
    warmup_steps: int = attrs.field(default=0, validator=int_at_least(0))
    min_lr_ratio: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    weight_decay: float = attrs.field(default=0.0, validator=at_least(0.0))
    grad_clip_norm: float = attrs.field(default=1.0, validator=at_least(0.0))
    lora_rank: int = attrs.field(default=16, validator=int_at_least(0))  # 0 = full fine-tuning
    lora_alpha: float = attrs.field(default=32.0, validator=in_range(0.0, 1e6, low_open=True))
    max_length: int = attrs.field(default=256, validator=int_at_least(2))
    # A row longer than max_length: "keep_end" drops its oldest prompt (whole leading messages,
    # then tokens), "keep_start" its end, "error" stops the run; one that still cannot fit
    # without losing what it trains on is skipped and counted.
    truncation: str = attrs.field(
        default=Truncation.KEEP_END.value, validator=one_of([t.value for t in Truncation])
    )
    train_on: str = attrs.field(
        default=TrainOn.LAST_ASSISTANT_MESSAGE.value, validator=one_of([t.value for t in TrainOn])
    )
    renderer: str = attrs.field(default="role_colon", validator=one_of(list(RENDERERS)))
    checkpoint_every: int = attrs.field(default=0, validator=int_at_least(0))  # 0 = final only
    keep_checkpoints: int = attrs.field(default=0, validator=int_at_least(0))  # 0 = keep all
    eval_every: int = attrs.field(
        default=64, validator=int_at_least(0)
    )  # 0 = before and after only
    eval_batch_size: int = attrs.field(default=16, validator=int_at_least(1))
    submit_ahead: int = attrs.field(default=2, validator=int_at_least(0))
    num_samples: int = attrs.field(default=16, validator=int_at_least(0))  # held-out prompts scored
    sample_max_tokens: int = attrs.field(default=48, validator=int_at_least(1))
    seed: int = attrs.field(default=0, validator=int_at_least(0))
    output: str = attrs.field(default="runs", validator=_prefix)
    run_id: str | None = attrs.field(default=None, validator=attrs.validators.optional(safe_name))
    # Continue run `run_id` from its newest checkpoint that verifies (settings checked
    # against the run's saved ones: see TRAJECTORY_FIELDS).
    resume: bool = attrs.field(default=False, validator=boolean)
    # A NaN/Inf loss or gradient: "stop" the run naming step and batch, or "skip" the step.
    on_nonfinite: str = attrs.field(default="stop", validator=one_of(["stop", "skip"]))
    # Seconds a training call may take before the run stops naming it (0 = wait forever);
    # generous when set: a first step compiles for up to a minute.
    call_timeout_s: float = attrs.field(default=0.0, validator=at_least(0.0))

    # The shape of this class as saved in run records; bump it, and add an upgrade from the
    # old shape (saved mapping -> new mapping), when a field is renamed or its meaning changes.
    CONFIG_VERSION: ClassVar[int] = 2
    CONFIG_UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        1: _truncation_from_truncate,
    }

    # How a resume treats each field (a test checks every field is in exactly one set).
    # Changing one of these would train other weights than the saved run did: refused unless
    # accepted explicitly.
    TRAJECTORY_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "base_model",
            "dataset",
            "train_split",
            "eval_split",  # a dataset without it holds out train rows instead
            "eval_holdout",
            "batch_size",
            "learning_rate",
            "lr_schedule",
            "warmup_steps",
            "min_lr_ratio",
            "weight_decay",
            "grad_clip_norm",
            "lora_rank",
            "lora_alpha",
            "max_length",
            "truncation",
            "train_on",
            "renderer",
            "seed",
        }
    )
    # How many steps the run has: the LR schedule's length, so part of the trajectory unless
    # the schedule is constant (then a run may be extended or cut short freely).
    SCHEDULE_LENGTH_FIELDS: ClassVar[frozenset[str]] = frozenset({"max_steps", "num_epochs"})
    # Where and how often to evaluate, checkpoint, sample and report, and who the run is.
    FREE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "checkpoint_every",
            "keep_checkpoints",
            "eval_every",
            "eval_batch_size",
            "submit_ahead",
            "num_samples",
            "sample_max_tokens",
            "output",
            "run_id",
            "resume",
            "on_nonfinite",  # what happens at a NaN, not what a finite step trains
            "call_timeout_s",
        }
    )

    def __attrs_post_init__(self) -> None:
        if self.resume and self.run_id is None:
            raise ValidationError(
                "SFTConfig.resume", "resuming needs the run_id of the run to continue"
            )

    def trajectory_fields(self) -> frozenset[str]:
        if self.lr_schedule == ScheduleKind.CONSTANT:
            return self.TRAJECTORY_FIELDS
        return self.TRAJECTORY_FIELDS | self.SCHEDULE_LENGTH_FIELDS


@attrs.frozen
class RunResult:
    run_id: str
    steps: int
    metrics: list[dict[str, float]]  # one per step: step, loss, lr, grad_norm, tokens, ...
    eval: list[dict[str, float]]  # eval rows: step, eval/nll, eval/exact_match, ...
    checkpoints: tuple[CheckpointRecord, ...]
    sampler: CheckpointRef | None
    samples: tuple[SampleComparison, ...]
    # Rows left out because no truncation fits them: {"train": n, "eval": m}
    skipped_examples: Mapping[str, int] = attrs.field(factory=dict)


def build_workflow(config: SFTConfig) -> Workflow:
    return Workflow(
        "sft",
        [
            load_dataset,
            start_session,
            check_sampling,
            render_dataset,
            plan_training,
            resume_from_checkpoint,
            save_run_record,
            evaluate_stage("evaluate_base", at="start_step"),
            Loop(
                "train",
                [
                    forward_backward,
                    optim_step,
                    collect_results,
                    Every(evaluate_stage("evaluate", at="step"), config.eval_every),
                    # Collect (and so record) every step in flight before the checkpoint's
                    # index entry exists: a resumed run then has all metrics up to it.
                    Every(drain, config.checkpoint_every),
                    Every(checkpoint_stage("checkpoint", at="step"), config.checkpoint_every),
                ],
            ),
            drain,
            evaluate_stage("evaluate_final", at="total_steps"),
            checkpoint_stage("final_checkpoint", at="total_steps"),
            export_sampler,
            sample_answers,
        ],
        description="Supervised fine-tuning on chat data (LoRA or full), with held-out eval.",
    )


def new_run_id(prefix: str = "sft") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def run(
    config: SFTConfig,
    adapters: Adapters,
    *,
    observers: Sequence[Observer] = (),
    retry: RetryPolicy | None = None,
    accept_changes: bool = False,
) -> RunResult:
    """Run SFT. Before anything is written, claims the run (see ``galley.core.runs``): a new
    run refuses an existing ``run_id``, a resume refuses a run in use or settings that would
    change its training (unless ``accept_changes``). Raises ``DataFlowError`` before doing
    anything if the workflow is miswired and ``WorkflowError`` (with the state so far) if a
    stage fails for good."""
    run_id = config.run_id or new_run_id()
    config = attrs.evolve(config, run_id=run_id)
    initial = attrs.asdict(config, recurse=False)
    runner = Runner(
        adapters,
        run_id=run_id,
        retry=retry,
        observers=observers,
        call_timeout_s=config.call_timeout_s,
    )
    state: dict[str, Any] = {}
    claim = claim_run(
        adapters, "sft", config, accept_changes=accept_changes, retry=runner.retry, log=runner.log
    )
    with claim as run_record:
        outcome: RunOutcome = "failed"
        try:
            state = runner.run(build_workflow(config), {**initial, "run_record": run_record})
            outcome = "finished"
        except WorkflowError as error:
            state = error.state
            if isinstance(error.__cause__, KeyboardInterrupt):
                outcome = "interrupted"
            raise
        finally:
            if "session" in state:
                state["session"].close()
            end_tracked_run(adapters.metrics, outcome, runner.log)
    rows = defaultdict(
        list, earlier_rows(adapters, run_id, state["start_step"]) if config.resume else {}
    )
    for record in runner.records:
        rows[record.stream].append({"step": float(record.step), **record.metrics})
    return RunResult(
        run_id=run_id,
        steps=state["total_steps"] - state["start_step"],
        metrics=rows[TRAIN],
        eval=_merge_by_step(rows[EVAL]),
        checkpoints=tuple(state["checkpoints"]),
        sampler=state.get("sampler"),
        samples=tuple(state.get("samples", ())),
        skipped_examples=dict(state.get("skipped_examples", {})),
    )


def resume_config(
    adapters: Adapters, run_id: str, *, output: str = "runs", **changes: Any
) -> SFTConfig:
    """The saved config of run ``run_id`` (under ``output``), set to resume, with ``changes``:
    ``run(resume_config(adapters, "my-run"), adapters)`` continues it as it was started."""
    saved = from_data(SFTConfig, resume_settings(adapters, output, run_id, SFTConfig))
    return attrs.evolve(saved, resume=True, **changes)


def earlier_rows(
    adapters: Adapters, run_id: str, resumed_at: int
) -> dict[str, list[dict[str, float]]]:
    """Metrics the interrupted run recorded up to the checkpoint it resumes from (steps after
    it are trained again, and the start is evaluated again if due). The last row of a step
    wins, so repeated resumes don't duplicate."""
    train: dict[int, dict[str, float]] = {}
    evals: dict[int, list[dict[str, float]]] = {}
    reader = metrics_reader(adapters)
    if reader is None:  # a write-only sink: the earlier rows live only there
        structlog.get_logger("galley").warning(
            "run.earlier_metrics_unread", run_id=run_id, reason="the metrics adapter cannot read"
        )
        return {TRAIN: [], EVAL: []}
    for record in reader.read(run_id):
        row = {"step": float(record.step), **record.metrics}
        if record.stream == TRAIN and record.step <= resumed_at:
            train[record.step] = row
        elif record.stream == EVAL and record.step < resumed_at:
            evals.setdefault(record.step, []).append(row)
    return {
        TRAIN: [train[s] for s in sorted(train)],
        EVAL: [row for s in sorted(evals) for row in evals[s]],
    }


def _merge_by_step(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    merged: dict[float, dict[str, float]] = {}
    for row in rows:
        merged.setdefault(row["step"], {}).update(row)
    return list(merged.values())
