"""The runner: checks a workflow's data flow, then runs it stage by stage.

It owns the cross-cutting work so stages stay small: structlog events for the workflow, every
stage and every step; recording metrics through the MetricsStore port; retrying stages that
raise transient errors; and stopping cleanly, with the state so far, on any other error.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

import attrs
import structlog

from galley.core.adapter_set import Adapters
from galley.core.engine.dataflow import check_data_flow
from galley.core.engine.stage import Every, Loop, Stage, Step, Workflow
from galley.core.errors import DataFlowError, PortTimeoutError, WorkflowError
from galley.core.retry import RetryPolicy, call_with_retry
from galley.core.runs.records import MetricRecord

T = TypeVar("T")
Stream = str  # a MetricRecord's stream: "train", "eval", or a workflow's own


class Observer(Protocol):
    """Follows a run as it goes (the CLI's progress bar is one)."""

    def on_loop_start(self, loop: str, done: int, total: int) -> None: ...

    def on_iteration_end(self, loop: str, counter: int) -> None: ...

    def on_metrics(self, stream: Stream, step: int, metrics: Mapping[str, float]) -> None: ...


@attrs.define
class StageContext:
    """What a running stage may use besides its inputs: the adapters, a logger bound to the
    run, and the metrics recorder."""

    adapters: Adapters
    run_id: str
    log: Any
    _runner: Runner

    def record_metrics(self, stream: Stream, step: int, metrics: Mapping[str, float]) -> None:
        self._runner.record_metrics(stream, step, metrics)

    def flush_metrics(self) -> None:
        """Make every metric committed so far durable (before writing what points past it)."""
        self._runner.flush_metrics()

    def wait(self, future: Future[T], call: str, step: int | None = None) -> T:
        """The result of a port call's ``future``, waiting at most the run's ``call_timeout_s``
        (forever when it is 0): a backend that never answers fails the stage, naming ``call``
        (and the ``step`` it was for), instead of hanging the run."""
        timeout = self._runner.call_timeout_s or None
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            if future.done():  # the call itself failed with a timeout of its own
                raise
            for_step = f" (step {step})" if step is not None else ""
            raise PortTimeoutError(
                f"{call}{for_step} did not finish within {timeout:g} s (call_timeout_s); the "
                "backend may be stuck, or a first step still compiling needs a longer timeout"
            ) from None


class Runner:
    """Runs workflows against one set of adapters under one run id."""

    def __init__(
        self,
        adapters: Adapters,
        *,
        run_id: str,
        retry: RetryPolicy | None = None,
        observers: Sequence[Observer] = (),
        trace_stages: bool = False,
        call_timeout_s: float = 0.0,
    ) -> None:
        self.adapters = adapters
        self.call_timeout_s = call_timeout_s
        self.trace_stages = trace_stages
        self.run_id = run_id
        self.retry = retry or RetryPolicy()
        self.observers = tuple(observers)
        self.records: list[MetricRecord] = []
        # Metrics a stage records are held until the stage succeeds, like its state updates,
        # so a retried attempt never records them twice.
        self._uncommitted: list[MetricRecord] | None = None
        self.log = structlog.get_logger("galley").bind(run_id=run_id)
        self._ctx = StageContext(adapters, run_id, self.log, self)

    def record_metrics(self, stream: Stream, step: int, metrics: Mapping[str, float]) -> None:
        """Record now, or when the running stage succeeds if called from a stage."""
        record = MetricRecord(self.run_id, stream, step, metrics, time.time())
        if self._uncommitted is not None:
            self._uncommitted.append(record)
        else:
            self._commit_metrics(record)

    def _commit_metrics(self, record: MetricRecord) -> None:
        call_with_retry(
            self.retry,
            lambda: self.adapters.metrics.record(record),
            self._on_retry("metrics.record", record.step),
        )
        self.records.append(record)
        self.log.info(f"{record.stream}.metrics", step=record.step, **record.metrics)
        for observer in self.observers:
            observer.on_metrics(record.stream, record.step, record.metrics)

    def flush_metrics(self) -> None:
        call_with_retry(
            self.retry, self.adapters.metrics.flush, self._on_retry("metrics.flush", None)
        )

    def run(self, workflow: Workflow, initial: Mapping[str, Any]) -> dict[str, Any]:
        """Run ``workflow`` from ``initial`` state; return the final state.

        Raises :class:`DataFlowError` before running anything if a stage reads a key nothing
        provides, and :class:`WorkflowError` (with ``.state``) when a stage fails for good."""
        check_data_flow(workflow, initial)
        state = dict(initial)
        log = self.log.bind(workflow=workflow.name)
        log.info("workflow.start", stages=[s.name for s in workflow.stages()])
        started = time.perf_counter()
        try:
            self._run_steps(workflow.steps, state, None)
            try:
                self.flush_metrics()
            except (Exception, KeyboardInterrupt) as error:
                raise WorkflowError(
                    f"flushing the metrics store failed: {type(error).__name__}: {error}",
                    stage="flush_metrics",
                    step=None,
                    state=dict(state),
                ) from error
        except KeyboardInterrupt as error:  # between stages (an observer's turn)
            log.error("workflow.interrupted")
            raise WorkflowError(
                "interrupted", stage="(between stages)", step=state.get("step"), state=dict(state)
            ) from error
        except WorkflowError as error:
            log.error("workflow.error", stage=error.stage, step=error.step, error=str(error))
            if error.internal and error.__cause__ is not None:  # a crash: where it happened
                cause = error.__cause__
                trace = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
                log.info("workflow.crash", stage=error.stage, traceback=trace)
            raise
        log.info("workflow.end", duration_s=round(time.perf_counter() - started, 4))
        return state

    def _run_steps(self, steps: Sequence[Step], state: dict[str, Any], step: int | None) -> None:
        for item in steps:
            if isinstance(item, Loop):
                self._run_loop(item, state)
            elif isinstance(item, Every):
                if item.should_run(state):
                    self._run_stage(item.stage, state, step)
            else:
                self._run_stage(item, state, step)

    def _run_loop(self, loop: Loop, state: dict[str, Any]) -> None:
        done, total = int(state[loop.start]), int(state[loop.stop])
        self.log.info("loop.start", loop=loop.name, done=done, total=total)
        for observer in self.observers:
            observer.on_loop_start(loop.name, done, total)
        for counter in range(done + 1, total + 1):
            state[loop.counter] = counter
            self._run_steps(loop.body, state, counter)
            self.log.debug("step.end", loop=loop.name, step=counter)
            for observer in self.observers:
                observer.on_iteration_end(loop.name, counter)
        self.log.info("loop.end", loop=loop.name, steps=max(0, total - done))

    def _run_stage(self, stage: Stage, state: dict[str, Any], step: int | None) -> None:
        # Inside loops, stage events are debug-level and opt-in (``trace_stages``): a pair per
        # stage per step would cost more than the fastest stages themselves.
        quiet = step is not None and not self.trace_stages
        emit = self.log.debug if step is not None else self.log.info
        if not quiet:
            emit("stage.start", stage=stage.name, step=step)
        started = time.perf_counter()
        inputs = {key: state[key] for key in stage.reads}

        def attempt() -> Mapping[str, Any]:
            self._uncommitted = []
            return stage.run(self._ctx, inputs)

        try:
            outputs = call_with_retry(self.retry, attempt, self._on_retry(stage.name, step))
            uncommitted = self._uncommitted or []
        except (Exception, KeyboardInterrupt) as error:  # Ctrl-C stops a run like a failure
            raise self._failure(stage, step, state, error) from error
        finally:
            self._uncommitted = None
        if outputs.keys() != stage.writes:
            extra, missing = set(outputs) - stage.writes, stage.writes - set(outputs)
            raise DataFlowError(
                f"stage {stage.name!r} declared writes {sorted(stage.writes)} but returned "
                f"{sorted(outputs)} (undeclared: {sorted(extra)}, missing: {sorted(missing)})"
            )
        state.update(outputs)
        try:
            for record in uncommitted:
                self._commit_metrics(record)
        except (Exception, KeyboardInterrupt) as error:
            raise self._failure(stage, step, state, error) from error
        ended = time.perf_counter()
        for observer in self.observers:  # an observer that follows stages (a trace) says so
            on_stage = getattr(observer, "on_stage", None)
            if on_stage is not None:
                on_stage(stage.name, step, started, ended)
        if not quiet:
            emit(
                "stage.end",
                stage=stage.name,
                step=step,
                duration_s=round(time.perf_counter() - started, 6),
            )

    @staticmethod
    def _failure(
        stage: Stage, step: int | None, state: dict[str, Any], error: BaseException
    ) -> WorkflowError:
        where = f" at step {step}" if step is not None else ""
        what = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        failure = WorkflowError(
            f"stage {stage.name!r} {what}{where}: {type(error).__name__}: {error}",
            stage=stage.name,
            step=step,
            state=dict(state),
        )
        return failure.with_hints(*getattr(error, "hints", ()))  # what may fix the cause

    def _on_retry(self, what: str, step: int | None) -> Any:
        def log_retry(attempt: int, error: BaseException, delay: float) -> None:
            self.log.warning(
                "retry", what=what, step=step, attempt=attempt, delay_s=delay, error=str(error)
            )

        return log_retry
