"""One run function for every workflow: ownership, resume, metric rows, clean-up.

A workflow module is its config class, a build function (config -> :class:`Workflow`) and what
it makes of the finished run; :func:`run_workflow` does the rest the same way for each:

- the run id (the config's, or a new one), claimed before any work
  (``galley.core.runs.run_record``): a new run refuses a taken id, a resume refuses a run
  in use or changed settings;
- the stages run under a :class:`Runner` from the config: each section whole and each own
  field, under its name (``galley.core.configs.stage_inputs``), plus ``paths`` (the run's
  keys: ``galley.core.runs.layout.RunPaths``), ``run_record`` and ``start_step`` (0, until a
  stage that resumes the run replaces it);
- on the way out, however the run ends: every training session in the state is closed, and
  the experiment trackers are told how it ended;
- the metric rows of the run per stream, one row per step, the rows an interrupted attempt
  recorded up to the checkpoint the run resumed from first.

The config must have the fields ``claim_run`` needs (``output``, ``run_id``, ``resume``, the
config version and field sets), and may have ``call_timeout_s``.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import structlog

from galley.core.adapter_set import Adapters
from galley.core.configs import stage_inputs
from galley.core.engine.runner import Observer, Runner
from galley.core.engine.stage import Workflow
from galley.core.errors import ValidationError, WorkflowError
from galley.core.retry import RetryPolicy
from galley.core.runs.layout import RunPaths
from galley.core.runs.records import EVAL, TRAIN, MetricRecord, RunOutcome
from galley.core.runs.registry import with_registered_base
from galley.core.runs.run_record import claim_run, metrics_reader
from galley.core.runs.tracking import end_tracked_run
from galley.ports.training import TrainingSession

Row = dict[str, float]  # a stream's metrics at one step, with "step"


@attrs.frozen
class WorkflowRun:
    """A finished run: its id, the final state, and its metric rows per stream (each row a
    step's metrics with ``step``, in step order, across resumes)."""

    run_id: str
    state: Mapping[str, Any]
    rows: Mapping[str, list[Row]]

    def stream(self, name: str) -> list[Row]:
        return list(self.rows.get(name, []))

    def trained(self) -> dict[str, Any]:
        """What every training workflow's result reports, by its field names: the run id, the
        steps this attempt trained, the train and eval rows (across resumes), the checkpoints,
        the exported sampler weights and the data's split."""
        state = self.state
        return {
            "run_id": self.run_id,
            "steps": state["total_steps"] - state["start_step"],
            "metrics": self.stream(TRAIN),
            "eval": self.stream(EVAL),
            "checkpoints": tuple(state["saved_checkpoints"]),
            "sampler": state.get("sampler"),
            "data": state.get("data_split"),
        }


def check_run_arguments(name: str, config: Any, adapters: Any) -> None:
    """Refuse, in words, what ``run(config, adapters)`` was handed instead of a config and an
    ``Adapters`` (a fixture not called, a dict of adapters, the arguments swapped) before any
    of it is used."""

    def shown(value: Any) -> str:
        return f"{type(value).__module__}.{type(value).__qualname__}"

    if not isinstance(adapters, Adapters):
        hint = ""
        if callable(adapters) and not isinstance(adapters, type):
            hint = " (a function: call it, e.g. galley_adapters())"
        elif isinstance(adapters, Mapping):
            hint = " (a mapping: build one with Adapters(**ports) or noop_adapters(**ports))"
        raise ValidationError(
            f"{name}.run: adapters",
            f"expected galley.core.Adapters, got {shown(adapters)}{hint}",
        )
    if not attrs.has(type(config)) or not hasattr(config, "run_id"):
        raise ValidationError(
            f"{name}.run: config", f"expected the {name} workflow's config, got {shown(config)}"
        )


def new_run_id(workflow: str) -> str:
    return f"{workflow}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def run_workflow(
    name: str,
    build: Callable[[Any], Workflow],
    config: Any,
    adapters: Any,
    *,
    observers: Sequence[Observer] = (),
    retry: RetryPolicy | None = None,
    accept_changes: bool = False,
) -> WorkflowRun:
    """Run workflow ``name`` (``build(config)``) on ``adapters``; see the module docstring.
    Raises what ``claim_run`` refuses with, ``DataFlowError`` before doing anything if the
    workflow is miswired, and ``WorkflowError`` (with the state so far) if a stage fails."""

    check_run_arguments(name, config, adapters)
    run_id = config.run_id or new_run_id(name)
    config = with_registered_base(adapters, attrs.evolve(config, run_id=run_id))
    runner = Runner(
        adapters,
        run_id=run_id,
        retry=retry,
        observers=observers,
        call_timeout_s=getattr(config, "call_timeout_s", 0.0),
    )
    state: dict[str, Any] = {}
    claim = claim_run(
        adapters, name, config, accept_changes=accept_changes, retry=runner.retry, log=runner.log
    )
    with claim as run_record:
        outcome: RunOutcome = "failed"
        paths = RunPaths(config.output, run_id)
        # A run starts at step 0 unless a stage resumes it (it replaces ``start_step``).
        initial = {
            "start_step": 0,
            **stage_inputs(config),
            "paths": paths,
            "run_record": run_record,
        }
        try:
            state = runner.run(build(config), initial)
            outcome = "finished"
        except WorkflowError as error:
            state = error.state
            if isinstance(error.__cause__, KeyboardInterrupt):
                outcome = "interrupted"
            raise
        finally:
            for value in state.values():
                if isinstance(value, TrainingSession):
                    value.close()
            end_tracked_run(adapters.metrics, outcome, runner.log)
    earlier = earlier_records(adapters, run_id) if config.resume else []
    resumed_at = int(state.get("start_step", 0))
    return WorkflowRun(run_id, state, rows_by_stream(earlier, runner.records, resumed_at))


def earlier_records(adapters: Any, run_id: str) -> list[MetricRecord]:
    """The rows earlier attempts of the run recorded ([] with a write-only metrics sink)."""
    reader = metrics_reader(adapters)
    if reader is None:  # a write-only sink: the earlier rows live only there
        structlog.get_logger("galley").warning(
            "run.earlier_metrics_unread", run_id=run_id, reason="the metrics adapter cannot read"
        )
        return []
    return reader.read(run_id)


def rows_by_stream(
    earlier: Iterable[MetricRecord], current: Iterable[MetricRecord], resumed_at: int
) -> dict[str, list[Row]]:
    """One row per stream and step. Of earlier attempts' rows, those before the checkpoint
    the run resumed from are kept, and the train rows at it (steps after it are trained
    again, and its start is evaluated again if due); a later row of a step updates an
    earlier one, so repeated resumes do not duplicate."""
    merged: dict[str, dict[int, Row]] = defaultdict(dict)

    def add(record: MetricRecord) -> None:
        merged[record.stream].setdefault(record.step, {"step": float(record.step)}).update(
            record.metrics
        )

    for record in earlier:
        if record.step < resumed_at or (record.step == resumed_at and record.stream == TRAIN):
            add(record)
    for record in current:
        add(record)
    return {stream: [rows[s] for s in sorted(rows)] for stream, rows in merged.items()}
