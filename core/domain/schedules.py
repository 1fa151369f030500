"""Learning-rate schedules: pure functions of the step, with linear warmup."""

from __future__ import annotations

import math
from enum import StrEnum

import attrs

from galley.core.checks import at_least, in_range, int_at_least


class ScheduleKind(StrEnum):
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


@attrs.frozen
class LRSchedule:
    """LR at 0-based ``step``: warm up linearly over ``warmup_steps`` to ``base_lr``, then hold
    (constant) or decay to ``min_lr_ratio * base_lr`` at ``total_steps`` (linear, cosine)."""

    base_lr: float = attrs.field(validator=at_least(0.0))
    kind: ScheduleKind = attrs.field(default=ScheduleKind.CONSTANT, converter=ScheduleKind)
    warmup_steps: int = attrs.field(default=0, validator=int_at_least(0))
    total_steps: int = attrs.field(default=1, validator=int_at_least(1))
    min_lr_ratio: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))

    def __call__(self, step: int) -> float:
        return lr_at(step, self)


def lr_at(step: int, schedule: LRSchedule) -> float:
    s = schedule
    if step < s.warmup_steps:
        return s.base_lr * (step + 1) / s.warmup_steps
    if s.kind is ScheduleKind.CONSTANT:
        return s.base_lr
    span = max(1, s.total_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    floor = s.base_lr * s.min_lr_ratio
    if s.kind is ScheduleKind.LINEAR:
        return s.base_lr - (s.base_lr - floor) * progress
    return floor + (s.base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
