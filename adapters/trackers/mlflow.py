"""MLflow: one MLflow run per galley run, in an SQLite store under the output folder by
default (``runs/mlflow.db``; browse it with ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``),
or any tracking server: ``tracking_uri = "https://..."`` with credentials from MLflow's own
environment variables (``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``), never from galley's config.

The run's settings are its params (logged once: MLflow params cannot change), galley's run id
is its name and its ``galley.run_id`` tag, and rows are sent in batches (a call to a tracking
server per step would slow training down).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from galley.adapters.helpers.tracker import Tracker, hyperparameters, metric_key
from galley.core.runs.records import MetricRecord, RunOutcome, TrackedRun

# MLflow's limits on one log_batch call and on a param's value.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000
STATUS: Mapping[str, str] = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


@attrs.frozen
class MlflowOptions:
    tracking_uri: str = "sqlite:///runs/mlflow.db"
    experiment: str = "galley"
    artifact_location: str | None = None  # for a new experiment; None: MLflow's default
    send_every_s: float = 5.0  # rows go in batches at most this far apart (and at each flush)
    # A server that does not answer: the tracker drops out after this long, training starts.
    start_timeout_s: float = 30.0


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, options: MlflowOptions) -> None:
        super().__init__()
        self.options = options
        self.send_every_s = options.send_every_s
        self.open_timeout_s = options.start_timeout_s
        self.mlflow = self._import("mlflow", "mlflow")
        self.client: Any = None
        self.mlflow_run_id = ""

    def _open(self, run: TrackedRun) -> Mapping[str, str]:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        o = self.options
        if o.tracking_uri.startswith("sqlite:///"):  # the store's folder must exist
            Path(o.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        self.client = self.mlflow.MlflowClient(tracking_uri=o.tracking_uri)  # type: ignore[union-attr]
        previous = run.links.get("mlflow.run_id")
        if previous:
            try:
                return self._continue(previous, run)
            except (MlflowException, _NotThisRunError) as error:
                self.log.warning(
                    "tracker.new_run_instead",
                    earlier=previous,
                    reason=str(error),
                    note="a new MLflow run continues galley's run from here",
                )
        experiment = self.client.get_experiment_by_name(o.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(o.experiment, o.artifact_location)
        )
        tags = {"galley.run_id": run.run_id, "galley.workflow": run.workflow}
        if run.resumed:
            tags["galley.resumed_after_step"] = str(run.start_step)
        created = self.client.create_run(experiment_id, run_name=run.run_id, tags=tags)
        self.mlflow_run_id = created.info.run_id
        params = [
            Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in hyperparameters(run.config).items()
        ]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.mlflow_run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
        return {"mlflow.run_id": self.mlflow_run_id, "mlflow.experiment_id": experiment_id}

    def _continue(self, mlflow_run_id: str, run: TrackedRun) -> Mapping[str, str]:
        """Continue the MLflow run of the earlier attempt, if it is this galley run's."""
        found = self.client.get_run(mlflow_run_id)
        owner = found.data.tags.get("galley.run_id")
        if owner != run.run_id:
            raise _NotThisRunError(f"MLflow run {mlflow_run_id} is galley run {owner!r}'s")
        self.mlflow_run_id = mlflow_run_id
        self.client.update_run(mlflow_run_id, status="RUNNING")
        self.client.set_tag(mlflow_run_id, "galley.resumed_after_step", str(run.start_step))
        return {
            "mlflow.run_id": mlflow_run_id,
            "mlflow.experiment_id": found.info.experiment_id,
        }

    def _send(self, rows: Sequence[MetricRecord]) -> None:
        from mlflow.entities import Metric

        metrics = [
            Metric(metric_key(row.stream, k), v, int((row.time or time.time()) * 1000), row.step)
            for row in rows
            for k, v in row.metrics.items()
        ]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            batch = metrics[i : i + MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.mlflow_run_id, metrics=batch)

    def _end(self, outcome: RunOutcome) -> None:
        self.client.set_terminated(self.mlflow_run_id, STATUS[outcome])


class _NotThisRunError(Exception):
    pass
