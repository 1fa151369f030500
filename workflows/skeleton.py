"""The one skeleton every training workflow is built on: SFT, DPO, RL and distillation are
each their loading, rendering, setup, step, measure and tail on it.

load -> check_split -> start_session -> render -> plan_training -> resume_from_checkpoint
-> init_weights -> setup -> save_run_record -> recorded -> evaluate_base -> before
train loop: step -> optim_step -> collect_results [-> evaluate] [-> before_checkpoint
-> checkpoint]
drain -> evaluate_final -> final_checkpoint -> export_sampler -> after
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from galley.core.engine import FunctionStage, Stage, Step
from galley.core.stages import (
    check_split,
    checkpoint_stage,
    drain,
    evaluate_stage,
    export_sampler,
    init_weights,
    plan_training,
    resume_from_checkpoint,
    save_run_record,
    start_session,
    training_loop,
)
from galley.core.stages.evaluate import Measure, heldout_metrics


@attrs.frozen
class TrainingParts:
    """What makes one training workflow differ from another."""

    load: Stage  # the rows: train and held-out
    render: Sequence[Stage]  # rows -> what the session reads (after the session starts)
    step: Stage  # submits one optimizer step's gradient
    measure: Measure = heldout_metrics  # what an evaluation records
    setup: Sequence[Stage] = ()  # before the run is recorded: how batches are made
    recorded: Sequence[Stage] = ()  # once the run is recorded, before the first evaluation
    before: Sequence[Stage] = ()  # after the first evaluation
    before_checkpoint: Stage | None = None  # settles what a resume needs
    after: Sequence[Stage] = ()  # after the final export


def training_steps(config: Any, parts: TrainingParts) -> list[Step]:
    """The stages of a training run: ``parts`` on the shared skeleton, evaluated every
    ``config.eval_every`` steps and checkpointed every ``config.checkpoint_every``."""

    def evaluate(name: str, at: str) -> FunctionStage:
        return evaluate_stage(name, at, measure=parts.measure)

    return [
        parts.load,
        check_split,
        start_session,
        *parts.render,
        plan_training,
        resume_from_checkpoint,
        init_weights,
        *parts.setup,
        save_run_record,
        *parts.recorded,
        evaluate("evaluate_base", at="start_step"),
        *parts.before,
        training_loop(
            parts.step,
            evaluate("evaluate", at="step"),
            config.evaluation.eval_every,
            config.checkpoints.checkpoint_every,
            before_checkpoint=parts.before_checkpoint,
        ),
        drain,
        evaluate("evaluate_final", at="total_steps"),
        checkpoint_stage("final_checkpoint", at="total_steps"),
        export_sampler,
        *parts.after,
    ]
