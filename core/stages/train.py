"""Training stages: plan the batches, submit forward_backward and optim_step ahead, collect.

Submission and collection are separate stages so the device never waits on the host: step k's
requests are queued while step k-1 (up to ``submit_ahead`` steps) is still running, and each
stage makes at most one non-idempotent call, so retrying a stage never doubles a gradient.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from galley.core.configs import OnNonfinite
from galley.core.domain.batching import BatchPlan, total_steps
from galley.core.domain.schedules import LRSchedule
from galley.core.domain.types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    OptimStepResult,
)
from galley.core.engine import FunctionStage, StageContext, reads_of, stage
from galley.core.errors import NonFiniteError, ValidationError
from galley.core.runs.records import TRAIN
from galley.core.sections import OptimSection

if TYPE_CHECKING:
    from galley.ports.training import TrainingSession


@attrs.define
class DoneClock:
    """Records when a future finished (a done-callback), so throughput reflects when the
    session did the work, not when the host got round to collecting it."""

    at: float | None = None

    def __call__(self, _: object) -> None:
        self.at = time.perf_counter()


@attrs.frozen
class InFlightStep:
    step: int
    forward_backward: Future[ForwardBackwardOutput]
    optim: Future[OptimStepResult] | None
    tokens: int
    submitted_at: float
    examples: tuple[int, ...] = ()
    # Metrics known when the step was submitted (a custom loss's, from its forward pass);
    # they are recorded with the step's and win over them (its own "loss").
    metrics: Mapping[str, float] = attrs.field(factory=dict)
    # Metrics of the finished forward_backward's outputs (an RL step's KL to its sampler).
    output_metrics: Callable[[ForwardBackwardOutput], Mapping[str, float]] | None = attrs.field(
        default=None, eq=False
    )
    done: DoneClock = attrs.field(factory=DoneClock, eq=False)

    def with_optim(self, optim: Future[OptimStepResult]) -> InFlightStep:
        return InFlightStep(
            self.step,
            self.forward_backward,
            optim,
            self.tokens,
            self.submitted_at,
            self.examples,
            self.metrics,
            self.output_metrics,
            self.done,
        )


@attrs.frozen
class Pipeline:
    """Steps submitted but not yet collected, oldest first."""

    in_flight: tuple[InFlightStep, ...] = ()
    last_done_at: float | None = None

    # Every step changes the pipeline two or three times: these build the new one directly
    # (``attrs.evolve`` looks the fields up again on each call).
    def with_in_flight(
        self, in_flight: tuple[InFlightStep, ...], last_done_at: float | None = None
    ) -> Pipeline:
        last = self.last_done_at if last_done_at is None else last_done_at
        return Pipeline(in_flight, last)


def weights_of(datum: Datum) -> np.ndarray[Any, Any]:
    return datum.loss_fn_inputs["weights"].data


def normalised_batch(data: Sequence[Datum]) -> list[Datum]:
    """The batch with weights divided by its trained-token count, so the summed loss is the
    mean per-token NLL and the gradient's scale does not depend on batch length."""
    total = np.float32(sum(weights_of(d).sum() for d in data))
    if total <= 0:
        raise ValidationError("batch", "has no trained tokens (every weight is 0)")
    return [
        Datum(d.model_input, {**d.loss_fn_inputs, "weights": weights_of(d) / total}) for d in data
    ]


@stage(
    writes=("batch_plan", "total_steps", "schedule", "pipeline"),
)
def plan_training(
    ctx: StageContext,
    train_data: Sequence[Datum],
    batch_size: int,
    seed: int,
    num_epochs: int,
    max_steps: int | None,
    optim: OptimSection,
) -> dict[str, Any]:
    """Fix the batch order (seeded shuffle per epoch), the step count and the LR schedule."""
    plan = BatchPlan(num_examples=len(train_data), batch_size=batch_size, seed=seed)
    steps = total_steps(plan, num_epochs, max_steps)
    length = max(1, steps)
    schedule = LRSchedule(
        optim.learning_rate, optim.lr_schedule, optim.warmup_steps, length, optim.min_lr_ratio
    )
    ctx.log.info("training.planned", steps=steps, steps_per_epoch=plan.steps_per_epoch)
    return {
        "batch_plan": plan,
        "total_steps": steps,
        "schedule": schedule,
        "pipeline": Pipeline(),
    }


def forward_backward_stage(
    loss_fn: str = "cross_entropy",
    loss_fn_config: Mapping[str, float] | None = None,
    prepare: Callable[[Sequence[Datum]], Sequence[Datum]] = normalised_batch,
    name: str = "forward_backward",
) -> FunctionStage:
    """A stage submitting the gradient of step ``step``'s batch under ``loss_fn`` (with
    ``loss_fn_config``), after ``prepare`` (SFT's: weights normalised by the batch's trained
    tokens). It does not wait."""

    def run(
        ctx: StageContext,
        session: TrainingSession,
        train_data: Sequence[Datum],
        batch_plan: BatchPlan,
        step: int,
        pipeline: Pipeline,
    ) -> dict[str, Any]:
        indices = batch_plan.indices(step - 1).tolist()
        batch = prepare([train_data[i] for i in indices])
        future = session.forward_backward(batch, loss_fn, loss_fn_config)
        tokens = sum(d.model_input.length for d in batch)
        entry = InFlightStep(step, future, None, tokens, time.perf_counter(), tuple(indices))
        return {"pipeline": pipeline.with_in_flight((*pipeline.in_flight, entry))}

    return FunctionStage(
        name,
        run,
        reads=reads_of(run),
        writes=("pipeline",),
        ports=("training",),
        doc=f"Submit the gradient of step `step`'s batch under `{loss_fn}` (does not wait).",
    )


forward_backward = forward_backward_stage()  # SFT's: cross-entropy on normalised weights


@stage(
    writes=("pipeline",),
    ports=("training",),
)
def optim_step(
    ctx: StageContext,
    session: TrainingSession,
    schedule: LRSchedule,
    step: int,
    pipeline: Pipeline,
    optim: OptimSection,
) -> dict[str, Any]:
    """Submit the AdamW update of step ``step`` with the scheduled LR (does not wait)."""
    params = AdamParams(
        learning_rate=schedule(step - 1),
        beta1=optim.adam_beta1,
        beta2=optim.adam_beta2,
        eps=optim.adam_eps,
        weight_decay=optim.weight_decay,
        grad_clip_norm=optim.grad_clip_norm,
    )
    *older, last = pipeline.in_flight
    if last.step != step or last.optim is not None:
        raise ValidationError(
            "pipeline", f"optim_step for step {step} without its forward_backward"
        )
    future = session.optim_step(params)
    future.add_done_callback(last.done)
    return {"pipeline": pipeline.with_in_flight((*older, last.with_optim(future)))}


def check_finite(entry: InFlightStep, what: str, value: float) -> None:
    if not math.isfinite(value):
        raise NonFiniteError(entry.step, what, value, entry.examples)


def collect(
    ctx: StageContext, pipeline: Pipeline, keep_in_flight: int, on_nonfinite: OnNonfinite
) -> Pipeline:
    """Wait for the oldest steps until at most ``keep_in_flight`` remain; record their metrics.
    A NaN/Inf loss or gradient stops the run, or with ``on_nonfinite="skip"`` skips the step."""
    pending = list(pipeline.in_flight)
    last = pipeline.last_done_at
    while len(pending) > keep_in_flight:
        entry = pending.pop(0)
        fb = ctx.wait(entry.forward_backward, "training.forward_backward", entry.step)
        optim = (
            ctx.wait(entry.optim, "training.optim_step", entry.step)
            if entry.optim is not None
            else None
        )
        done = entry.done.at or time.perf_counter()
        elapsed = done - max(entry.submitted_at, last or entry.submitted_at)
        last = done
        finite = math.isfinite(fb.metrics["loss:sum"]) and (
            optim is None or math.isfinite(optim.grad_norm)
        )
        if not finite and on_nonfinite == OnNonfinite.SKIP:
            # The backend left weights and optimizer state as they were (port guarantee).
            ctx.log.warning("step.skipped", step=entry.step, examples=list(entry.examples))
            ctx.record_metrics(TRAIN, entry.step, {"skipped": 1.0, "tokens": float(entry.tokens)})
            continue
        check_finite(entry, "loss", fb.metrics["loss:sum"])
        if optim is not None:
            check_finite(entry, "gradient norm", optim.grad_norm)
        metrics = {"loss": fb.metrics["loss:sum"], "tokens": float(entry.tokens)}
        if optim is not None:
            metrics |= {
                "lr": optim.learning_rate,
                "grad_norm": optim.grad_norm,
                "update_norm": optim.update_norm,
            }
        metrics["tokens_per_s"] = entry.tokens / elapsed if elapsed > 0 else 0.0
        if entry.output_metrics is not None:
            metrics |= entry.output_metrics(fb)
        ctx.record_metrics(TRAIN, entry.step, {**metrics, **entry.metrics})
    return pipeline.with_in_flight(tuple(pending), last)


@stage(writes=("pipeline",), ports=("training", "metrics"))
def collect_results(
    ctx: StageContext, pipeline: Pipeline, submit_ahead: int, on_nonfinite: OnNonfinite
) -> dict[str, Any]:
    """Collect finished steps, leaving ``submit_ahead`` steps queued on the session."""
    return {"pipeline": collect(ctx, pipeline, submit_ahead, on_nonfinite)}


@stage(writes=("pipeline",), ports=("training", "metrics"))
def drain(ctx: StageContext, pipeline: Pipeline, on_nonfinite: OnNonfinite) -> dict[str, Any]:
    """Collect every step still in flight."""
    return {"pipeline": collect(ctx, pipeline, 0, on_nonfinite)}
