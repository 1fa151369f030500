"""Evaluation stage: held-out NLL and bits per byte through ``forward`` (no gradient)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from galley.core.engine import FunctionStage, StageContext, reads_of, stage
from galley.core.records import EVAL
from galley.core.types import Datum, DatumBatch

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


def heldout_nll(
    ctx: StageContext, session: TrainingSession, data: Sequence[Datum], batch_size: int
) -> dict[str, float]:
    """Mean NLL per trained token over ``data`` (all batches submitted before any wait), and
    bits per byte of the trained text: the same loss in bits over the text's UTF-8 bytes,
    which compares models whose tokenizers differ."""
    futures = [
        session.forward(list(data[i : i + batch_size]), "cross_entropy")
        for i in range(0, len(data), batch_size)
    ]
    loss = sum(ctx.wait(f, "training.forward").metrics["loss:sum"] for f in futures)
    # Trained tokens: every weight (1 per token for a datum without weights), in one sum.
    weight = float(DatumBatch.of(data).column("weights", fill=1.0).sum(dtype=np.float64))
    size = trained_bytes(session, data)
    return {
        "eval/nll": loss / weight,
        "eval/bits_per_byte": loss / math.log(2) / size if size else math.nan,
        "eval/tokens": weight,
    }


def trained_bytes(session: TrainingSession, data: Sequence[Datum]) -> int:
    """UTF-8 bytes of the text the loss is taken on (the targets with a weight)."""
    total = 0
    for datum in data:
        targets = datum.loss_fn_inputs["target_tokens"].data
        weights = datum.loss_fn_inputs.get("weights")
        kept = targets if weights is None else targets[np.asarray(weights.data) > 0]
        total += len(session.tokenizer.decode([int(t) for t in kept]).encode())
    return total


def evaluate_stage(name: str, at: str) -> FunctionStage:
    """A stage evaluating after ``state[at]`` optimizer steps (once per step: it skips a step
    already evaluated). Requests of a session run in order, so it measures the weights of
    every step submitted before it; a training loop collects its steps in flight first
    (``drain``) for the eval row to follow its step's metrics."""

    def run(
        ctx: StageContext,
        session: TrainingSession,
        eval_data: Sequence[Datum],
        eval_batch_size: int,
        evaluated_at: int,
        **position: int,
    ) -> dict[str, Any]:
        step = position[at]
        if eval_data and step != evaluated_at:
            ctx.record_metrics(EVAL, step, heldout_nll(ctx, session, eval_data, eval_batch_size))
        return {"evaluated_at": step}

    return FunctionStage(
        name,
        run,
        reads=reads_of(run, (at,)),
        writes=("evaluated_at",),
        ports=("training", "metrics"),
        doc=f"Held-out NLL after `{at}` steps.",
    )


@stage(
    writes=("measured",),
    ports=("training", "metrics"),
)
def measure_heldout(
    ctx: StageContext,
    session: TrainingSession,
    eval_data: Sequence[Datum],
    eval_batch_size: int,
    evaluated_step: int,
) -> dict[str, Any]:
    """Held-out NLL and bits per byte of the session's weights, recorded at the step they
    were trained to (0 for a base model)."""
    measured = heldout_nll(ctx, session, eval_data, eval_batch_size)
    ctx.record_metrics(EVAL, evaluated_step, measured)
    return {"measured": measured}
