"""Supervised fine-tuning: the workflow, its config, and ``run``.

load_dataset -> start_session -> render_dataset -> plan_training -> evaluate_base
train loop: forward_backward -> optim_step -> collect_results [-> evaluate] [-> checkpoint]
drain -> evaluate_final -> final_checkpoint -> export_sampler -> sample_answers
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from galley.core.adapter_set import Adapters
from galley.core.chat import TrainOn
from galley.core.checks import at_least, in_range, int_at_least, non_empty, one_of, safe_name
from galley.core.config import config_from_mapping
from galley.core.engine import Every, Loop, Observer, RetryPolicy, Runner, Workflow
from galley.core.errors import ValidationError, WorkflowError
from galley.core.keys import check_prefix
from galley.core.records import CheckpointRecord
from galley.core.rendering import RENDERERS
from galley.core.schedules import ScheduleKind
from galley.core.stages import (
    SampleComparison,
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
    start_session,
)
from galley.core.types import CheckpointRef

DEFAULT_BASE_MODEL = "galley/tiny-lm"
DEFAULT_DATASET = "galley/tiny-instruct"


def _prefix(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    check_prefix(value, "SFTConfig.output")


@attrs.frozen
class SFTConfig:
    """Everything an SFT run needs besides its adapters; every field has a default."""

    base_model: str = attrs.field(default=DEFAULT_BASE_MODEL, validator=non_empty)
    dataset: str = attrs.field(default=DEFAULT_DATASET, validator=non_empty)
    train_split: str = "train"
    eval_split: str = "test"  # when the dataset lacks it, eval_holdout train rows are held out
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
    truncate: bool = True
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
    # Continue run `run_id` from its newest checkpoint that verifies (same config and seed).
    resume: bool = False
    # A NaN/Inf loss or gradient: "stop" the run naming step and batch, or "skip" the step.
    on_nonfinite: str = attrs.field(default="stop", validator=one_of(["stop", "skip"]))

    def __attrs_post_init__(self) -> None:
        if self.resume and self.run_id is None:
            raise ValidationError(
                "SFTConfig.resume", "resuming needs the run_id of the run to continue"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "sft config") -> SFTConfig:
        return config_from_mapping(cls, data, source)


@attrs.frozen
class RunResult:
    run_id: str
    steps: int
    metrics: list[dict[str, float]]  # one per step: step, loss, lr, grad_norm, tokens, ...
    eval: list[dict[str, float]]  # eval rows: step, eval/nll, eval/exact_match, ...
    checkpoints: tuple[CheckpointRecord, ...]
    sampler: CheckpointRef | None
    samples: tuple[SampleComparison, ...]


def build_workflow(config: SFTConfig) -> Workflow:
    return Workflow(
        "sft",
        [
            load_dataset,
            start_session,
            render_dataset,
            plan_training,
            resume_from_checkpoint,
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
) -> RunResult:
    """Run SFT. Raises ``DataFlowError`` before doing anything if the workflow is miswired and
    ``WorkflowError`` (with the state so far) if a stage fails for good."""
    run_id = config.run_id or new_run_id()
    initial = attrs.asdict(attrs.evolve(config, run_id=run_id), recurse=False)
    runner = Runner(adapters, run_id=run_id, retry=retry, observers=observers)
    state: dict[str, Any] = {}
    try:
        state = runner.run(build_workflow(config), initial)
    except WorkflowError as error:
        state = error.state
        raise
    finally:
        if "session" in state:
            state["session"].close()
    rows = (
        earlier_rows(adapters, run_id, state["start_step"])
        if config.resume
        else {"train": [], "eval": []}
    )
    for stream, record in runner.records:
        rows[stream].append({"step": float(record.step), **record.metrics})
    return RunResult(
        run_id=run_id,
        steps=state["total_steps"] - state["start_step"],
        metrics=rows["train"],
        eval=_merge_by_step(rows["eval"]),
        checkpoints=tuple(state["checkpoints"]),
        sampler=state.get("sampler"),
        samples=tuple(state.get("samples", ())),
    )


def earlier_rows(
    adapters: Adapters, run_id: str, resumed_at: int
) -> dict[str, list[dict[str, float]]]:
    """Metrics the interrupted run recorded up to the checkpoint it resumes from (steps after
    it are trained again). The last row of a step wins, so repeated resumes don't duplicate."""
    train: dict[int, dict[str, float]] = {}
    evals: list[dict[str, float]] = []
    for record in adapters.metrics.read(run_id):
        row = {"step": float(record.step), **record.metrics}
        if "loss" in record.metrics and record.step <= resumed_at:
            train[record.step] = row
        elif "loss" not in record.metrics and record.step < resumed_at:
            evals.append(row)
    return {"train": [train[s] for s in sorted(train)], "eval": evals}


def _merge_by_step(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    merged: dict[float, dict[str, float]] = {}
    for row in rows:
        merged.setdefault(row["step"], {}).update(row)
    return list(merged.values())
