"""Weights & Biases: offline runs under ``<dir>/wandb/`` by default, synced later with
``wandb sync``; ``mode = "online"`` logs live (the API key comes from ``WANDB_API_KEY``).

The run's settings are its W&B config, its name is galley's run id, and each row is logged
with galley's step as the ``step`` metric that every chart is drawn against (so a resume may
log a step again: W&B's own step counter would refuse a step lower than one it has seen).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from galley.adapters.helpers.tracker import Tracker, metric_key
from galley.core.checks import one_of
from galley.core.runs.records import MetricRecord, RunOutcome, TrackedRun

STEP = "step"


@attrs.frozen
class WandbOptions:
    project: str = "galley"
    entity: str | None = None  # your W&B user or team (online); None: the key's default
    mode: str = attrs.field(default="offline", validator=one_of(("offline", "online", "disabled")))
    dir: str = "runs"  # W&B writes <dir>/wandb/ (offline runs, its logs)
    tags: tuple[str, ...] = ()
    system_metrics: bool = False  # W&B's CPU/GPU/memory sampling, in a thread of its own
    init_timeout_s: float = 90.0  # how long to wait for W&B to start the run (online)


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, options: WandbOptions) -> None:
        super().__init__()
        self.options = options
        self.wandb = self._import("wandb", "wandb")
        self.run: Any = None

    def _open(self, run: TrackedRun) -> Mapping[str, str]:
        o, wandb = self.options, self.wandb
        assert wandb is not None
        previous = run.links.get("wandb.run_id")
        Path(o.dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=o.project,
            entity=o.entity,
            dir=o.dir,
            mode=o.mode,
            id=previous,
            resume="allow" if previous else None,
            name=run.run_id,
            job_type=run.workflow or None,
            tags=list(o.tags),
            config={**run.config, "galley_run_id": run.run_id},
            allow_val_change=True,  # a resume that accepted changed settings
            reinit="create_new",
            settings=wandb.Settings(
                silent=True,
                console="off",
                x_disable_stats=not o.system_metrics,
                init_timeout=o.init_timeout_s,
            ),
        )
        self.run.define_metric("*", step_metric=STEP)
        if run.resumed:
            self.run.summary["galley_resumed_after_step"] = run.start_step
        return {"wandb.run_id": str(self.run.id), "wandb.project": o.project}

    def _send(self, rows: Sequence[MetricRecord]) -> None:
        for row in rows:
            values: dict[str, float] = {
                metric_key(row.stream, k): v for k, v in row.metrics.items()
            }
            self.run.log({**values, STEP: row.step})

    def _end(self, outcome: RunOutcome) -> None:
        run, self.run = self.run, None
        run.finish(exit_code=0 if outcome == "finished" else 1)

    def _release(self) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=1)
