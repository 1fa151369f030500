"""Which examples go into which step: a seeded shuffle per epoch, as a pure function.

Because a batch is a function of (seed, step) alone, the data position of a run is just its
step, and resuming at step k replays exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import functools

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.checks import int_at_least
from galley.core.errors import ValidationError


@attrs.frozen
class DataPosition:
    step: int
    epoch: int
    batch_in_epoch: int


@attrs.frozen
class BatchPlan:
    num_examples: int = attrs.field(validator=int_at_least(1))
    batch_size: int = attrs.field(validator=int_at_least(1))
    seed: int = attrs.field(default=0, validator=int_at_least(0))
    shuffle: bool = True
    drop_last: bool = False

    def __attrs_post_init__(self) -> None:
        if self.drop_last and self.batch_size > self.num_examples:
            raise ValidationError(
                "BatchPlan.batch_size",
                f"{self.batch_size} exceeds the {self.num_examples} examples with drop_last on",
            )

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def epoch_order(self, epoch: int) -> npt.NDArray[np.int64]:
        """The example order of ``epoch`` (read-only; cached, as every step of it asks)."""
        return _epoch_order(self.num_examples, self.seed, epoch, self.shuffle)

    def position(self, step: int) -> DataPosition:
        epoch, batch = divmod(step, self.steps_per_epoch)
        return DataPosition(step, epoch, batch)

    def indices(self, step: int) -> npt.NDArray[np.int64]:
        """Example indices of the batch at 0-based ``step`` (epochs repeat past the first)."""
        pos = self.position(step)
        start = pos.batch_in_epoch * self.batch_size
        return self.epoch_order(pos.epoch)[start : start + self.batch_size]


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> npt.NDArray[np.int64]:
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int64)
    else:
        order = np.arange(num_examples, dtype=np.int64)
    order.flags.writeable = False
    return order


def total_steps(plan: BatchPlan, num_epochs: int, max_steps: int | None) -> int:
    """``max_steps`` when given (cycling epochs as needed), else whole epochs."""
    return max_steps if max_steps is not None else num_epochs * plan.steps_per_epoch
