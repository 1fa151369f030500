"""What runs write down: metric rows, checkpoint index entries, and what trackers are told."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from galley.core.checks import int_at_least, safe_name
from galley.core.domain.batching import DataPosition
from galley.core.domain.types import CheckpointRef

# The streams galley's workflows record; a workflow may add its own (a plain name).
TRAIN = "train"  # one row per optimizer step (a skipped step included)
EVAL = "eval"  # held-out evaluation rows


def _float_map(value: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in value.items()}


@attrs.frozen
class MetricRecord:
    """Metrics of one stream (``train``, ``eval``, ...) at one step of one run (step is the
    1-based optimizer step; 0 = before training). The stream is stated by whoever records the
    row, so a reader never infers it from the metric names."""

    run_id: str
    stream: str = attrs.field(validator=safe_name)
    step: int = attrs.field(validator=int_at_least(0))
    metrics: Mapping[str, float] = attrs.field(converter=_float_map)
    time: float = 0.0


# How a run ended, as an experiment tracker is told (its run's status).
RunOutcome = Literal["finished", "failed", "interrupted"]


@attrs.frozen
class TrackedRun:
    """What an experiment tracker is told when a run starts or resumes: galley's run id, the
    run's settings (JSON data, to log as hyperparameters), whether it resumes, the step
    training continues after (0 for a new run; the checkpoint's step on a resume), and
    ``links``, what trackers gave to be saved with the run when it first started (their own
    run ids, ...): a resume passes them back so each continues the same run of its own."""

    run_id: str
    workflow: str
    config: Mapping[str, Any] = attrs.field(factory=dict)
    resumed: bool = False
    start_step: int = attrs.field(default=0, validator=int_at_least(0))
    links: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class CheckpointRecord:
    """One line of a run's checkpoint index: the state saved after ``step`` optimizer steps and
    the data position training continues from."""

    name: str
    step: int = attrs.field(validator=int_at_least(0))
    state: CheckpointRef
    next_position: DataPosition
    sampler: CheckpointRef | None = None
    time: float = 0.0


@attrs.frozen
class DataSplit:
    """How many rows a run trains and evaluates on, and where the held-out ones came from:
    the eval split, or ``held_out`` rows of the train split (``eval_holdout``)."""

    dataset: str
    train_rows: int
    eval_rows: int
    eval_split: str
    held_out: bool

    def describe(self) -> str:
        if self.held_out:
            return f"train {self.train_rows} rows, held out {self.eval_rows} (eval_holdout)"
        return (
            f"train {self.train_rows} rows, eval {self.eval_rows} rows (split {self.eval_split!r})"
        )
