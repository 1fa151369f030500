"""What runs write down: metric rows and checkpoint index entries."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from galley.core.batching import DataPosition
from galley.core.checks import int_at_least, safe_name
from galley.core.types import CheckpointRef

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
