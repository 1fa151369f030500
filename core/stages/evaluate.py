"""Evaluation stage: held-out NLL and bits per byte through ``forward`` (no gradient)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from galley.core.domain.types import Datum
from galley.core.engine import FunctionStage, StageContext, reads_of, stage
from galley.core.engine.stage import first_sentence
from galley.core.runs.records import EVAL
from galley.core.sections import EvalSection
from galley.core.stages.sample import EvaluatedWeights

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


def heldout_nll(
    ctx: StageContext, session: TrainingSession, eval_data: Sequence[Datum], eval_batch_size: int
) -> dict[str, float]:
    """Mean NLL per trained token over ``eval_data`` (every batch submitted before any wait),
    and bits per byte of the trained text: the same loss in bits over the text's UTF-8 bytes,
    which compares models whose tokenizers differ."""
    futures = [
        session.forward(list(eval_data[i : i + eval_batch_size]), "cross_entropy")
        for i in range(0, len(eval_data), eval_batch_size)
    ]
    loss = sum(ctx.wait(f, "training.forward").metrics["loss:sum"] for f in futures)
    weight = sum(datum.num_loss_tokens for datum in eval_data)
    size = trained_bytes(session, eval_data)
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


def heldout_metrics(
    ctx: StageContext, session: TrainingSession, eval_data: Sequence[Datum], evaluation: EvalSection
) -> dict[str, float]:
    """Held-out NLL and bits per byte (``heldout_nll``), in batches of ``eval_batch_size``."""
    return heldout_nll(ctx, session, eval_data, evaluation.eval_batch_size)


Measure = Callable[..., Mapping[str, float]]  # (ctx, session, eval_data, **state) -> metrics


def evaluate_stage(name: str, at: str, measure: Measure = heldout_metrics) -> FunctionStage:
    """A stage recording ``measure`` (by default held-out NLL) under the eval stream after
    ``state[at]`` optimizer steps, once per step: it skips a step already evaluated. The
    state ``measure`` reads is named by its parameters after ``ctx``, as a stage's are.
    Requests of a session run in order, so it measures the weights of every step submitted
    before it; a training loop collects its steps in flight first (``drain``) for the eval
    row to follow its step's metrics."""
    measured = reads_of(measure) - {"session", "eval_data"}

    def run(
        ctx: StageContext,
        session: TrainingSession,
        eval_data: Sequence[Any],
        evaluated_at: int,
        **given: Any,
    ) -> dict[str, Any]:
        step = given[at]
        if eval_data and step != evaluated_at:
            reads = {key: given[key] for key in measured}
            ctx.record_metrics(EVAL, step, measure(ctx, session, eval_data, **reads))
        return {"evaluated_at": step}

    return FunctionStage(
        name,
        run,
        reads=reads_of(run, (at, *measured)),
        writes=("evaluated_at",),
        ports=("training", "metrics"),
        doc=f"{first_sentence(measure.__doc__ or measure.__name__)} After `{at}` steps.",
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
    evaluated: EvaluatedWeights,
) -> dict[str, Any]:
    """Held-out NLL and bits per byte of the session's weights, recorded at the step they
    were trained to (0 for a base model)."""
    measured = heldout_nll(ctx, session, eval_data, eval_batch_size)
    ctx.record_metrics(EVAL, evaluated.step, measured)
    return {"measured": measured}
