"""Telling experiment trackers (``RunTracker`` metrics sinks) that a run starts and ends.

A tracker keeps runs of its own (a W&B run, an MLflow run, a TensorBoard folder). What it gives
when a run starts is saved in the run's record, so a resume continues the same tracker run
instead of starting a second one. Metrics sinks that are not trackers are left alone.
"""

from __future__ import annotations

from typing import Any

import attrs

from galley.core.runs.records import RunOutcome, TrackedRun
from galley.core.runs.run_record import RunRecord
from galley.ports.metrics import RunTracker


def open_tracked_run(
    metrics: Any, record: RunRecord, *, resumed: bool, start_step: int
) -> RunRecord:
    """Open the run in ``metrics`` if it tracks runs; the record with what it gave to save."""
    if not isinstance(metrics, RunTracker):
        return record
    run = TrackedRun(
        record.run_id, record.workflow, record.config, resumed, start_step, record.trackers
    )
    links = metrics.open_run(run)
    return attrs.evolve(record, trackers={**record.trackers, **links}) if links else record


def end_tracked_run(metrics: Any, outcome: RunOutcome, log: Any) -> None:
    """Tell ``metrics`` how the run ended, if it tracks runs (it flushes first). Called on the
    way out of a run, so a tracker's failure is logged, never raised over how the run ended."""
    if not isinstance(metrics, RunTracker):
        return
    try:
        metrics.end_run(outcome)
    except Exception as error:
        log.warning(
            "metrics.end_run_failed", outcome=outcome, error=f"{type(error).__name__}: {error}"
        )
