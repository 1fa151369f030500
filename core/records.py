"""What runs write down: metric rows and checkpoint index entries."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from galley.core.batching import DataPosition
from galley.core.checks import int_at_least
from galley.core.types import CheckpointRef


def _float_map(value: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in value.items()}


@attrs.frozen
class MetricRecord:
    """Metrics of one step of one run (step is the 1-based optimizer step; 0 = before training)."""

    run_id: str
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
