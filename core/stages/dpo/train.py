"""The preference step and its held-out metrics.

A step runs ``forward`` on the batch's chosen and rejected answers (waiting for it: the loss
needs the log-probabilities), computes the preference loss and its gradient here, and submits
``forward_backward`` with cross entropy and ``weights = -gradient``: the same parameter
gradient on any TrainingClient (see ``galley.core.domain.custom_loss``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from galley.core.domain.batching import BatchPlan
from galley.core.domain.dpo import preference_metrics
from galley.core.domain.preferences import (
    RenderedPair,
    pair_datums,
    pair_logprobs,
    preference_gradient,
)
from galley.core.engine import StageContext, stage
from galley.core.sections import EvalSection
from galley.core.stages.dpo.reference import Reference, answer_logprobs_of
from galley.core.stages.train import InFlightStep, Pipeline

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


@stage(
    writes=("pipeline",),
    ports=("training",),
)
def preference_step(
    ctx: StageContext,
    session: TrainingSession,
    train_data: Sequence[RenderedPair],
    reference: Reference,
    batch_plan: BatchPlan,
    step: int,
    pipeline: Pipeline,
) -> dict[str, Any]:
    """Submit the preference gradient of step ``step``'s pairs (waits for their forward pass,
    not for the backward); the step's metrics are TRL's, from that forward pass."""
    submitted_at = time.perf_counter()
    indices = batch_plan.indices(step - 1).tolist()
    pairs = [train_data[i] for i in indices]
    forward = ctx.wait(
        session.forward(pair_datums(pairs), "cross_entropy"), "training.forward", step
    )
    data, metrics = preference_gradient(
        pairs, forward.logprobs, reference.logprobs.train.select(indices), reference.objective
    )
    future = session.forward_backward(data, "cross_entropy")
    tokens = sum(d.model_input.length for d in data)
    entry = InFlightStep(step, future, None, tokens, submitted_at, tuple(indices), metrics=metrics)
    return {"pipeline": pipeline.with_in_flight((*pipeline.in_flight, entry))}


def preference_eval(
    ctx: StageContext,
    session: TrainingSession,
    eval_data: Sequence[RenderedPair],
    evaluation: EvalSection,
    reference: Reference,
) -> dict[str, float]:
    """Held-out preference metrics: TRL's DPO loss and rewards on the eval pairs."""
    policy = answer_logprobs_of(ctx, session, eval_data, evaluation.eval_batch_size)
    scored = pair_logprobs(eval_data, policy, reference.logprobs.eval)
    return {f"eval/{k}": v for k, v in preference_metrics(scored, reference.objective).items()}
