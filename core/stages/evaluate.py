"""Evaluation stage: held-out NLL through ``forward`` (no gradient)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from galley.core.engine import FunctionStage, StageContext
from galley.core.records import EVAL
from galley.core.stages.train import Pipeline, collect
from galley.core.types import Datum, DatumBatch

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


def heldout_nll(
    ctx: StageContext, session: TrainingSession, data: Sequence[Datum], batch_size: int
) -> dict[str, float]:
    """Mean NLL per trained token over ``data`` (all batches submitted before any wait)."""
    futures = [
        session.forward(list(data[i : i + batch_size]), "cross_entropy")
        for i in range(0, len(data), batch_size)
    ]
    loss = sum(ctx.wait(f, "training.forward").metrics["loss:sum"] for f in futures)
    # Trained tokens: every weight (1 per token for a datum without weights), in one sum.
    weight = float(DatumBatch.of(data).column("weights", fill=1.0).sum(dtype=np.float64))
    return {"eval/nll": loss / weight, "eval/tokens": weight}


def evaluate_stage(name: str, at: str) -> FunctionStage:
    """A stage evaluating after ``state[at]`` optimizer steps (once per step: it skips a step
    already evaluated). It first collects the steps in flight, so the eval row follows its
    step's metrics."""

    def run(
        ctx: StageContext,
        session: TrainingSession,
        eval_data: Sequence[Datum],
        eval_batch_size: int,
        pipeline: Pipeline,
        evaluated_at: int,
        **position: int,
    ) -> dict[str, Any]:
        step = position[at]
        pipeline = collect(ctx, pipeline, 0)
        if eval_data and step != evaluated_at:
            ctx.record_metrics(EVAL, step, heldout_nll(ctx, session, eval_data, eval_batch_size))
        return {"pipeline": pipeline, "evaluated_at": step}

    return FunctionStage(
        name,
        run,
        reads=("session", "eval_data", "eval_batch_size", "pipeline", "evaluated_at", at),
        writes=("pipeline", "evaluated_at"),
        ports=("training", "metrics"),
        doc=f"Held-out NLL after `{at}` steps.",
    )
