"""LR schedules and the batch plan are pure functions with the properties training relies on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from galley.core import BatchPlan, LRSchedule, ValidationError
from galley.core.domain.batching import total_steps

schedules = st.builds(
    LRSchedule,
    base_lr=st.floats(1e-6, 1.0),
    kind=st.sampled_from(["constant", "linear", "cosine"]),
    warmup_steps=st.integers(0, 50),
    total_steps=st.integers(1, 500),
    min_lr_ratio=st.floats(0, 1),
)


@given(schedules, st.integers(0, 1000))
def test_lr_is_bounded(s: LRSchedule, step: int) -> None:
    assert 0 <= s(step) <= s.base_lr * (1 + 1e-9)
    if step < s.total_steps:  # every step training takes has a positive LR
        assert s(step) > 0


@given(schedules)
def test_warmup_rises_then_never_rises_again(s: LRSchedule) -> None:
    lrs = [s(i) for i in range(max(s.total_steps, s.warmup_steps) + 5)]
    warm = lrs[: s.warmup_steps]
    assert all(a < b for a, b in itertools.pairwise(warm))
    after = lrs[s.warmup_steps :]
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(after))
    if s.warmup_steps:
        assert lrs[s.warmup_steps - 1] == pytest.approx(s.base_lr)


def test_schedule_values() -> None:
    lin = LRSchedule(1.0, "linear", warmup_steps=2, total_steps=12)
    assert [lin(i) for i in (0, 1, 2, 7, 12, 50)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0, 0.0])
    cos = LRSchedule(1.0, "cosine", total_steps=10, min_lr_ratio=0.1)
    assert [cos(i) for i in (0, 5, 10)] == pytest.approx([1.0, 0.55, 0.1])
    assert LRSchedule(0.3)(1000) == 0.3
    with pytest.raises(ValueError, match="'exp'"):
        LRSchedule(1.0, "exp")


@given(st.integers(1, 200), st.integers(1, 64), st.integers(0, 2**16), st.integers(0, 5))
def test_each_epoch_is_a_permutation(n: int, batch: int, seed: int, epoch: int) -> None:
    plan = BatchPlan(n, batch, seed)
    steps = range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)
    batches = [plan.indices(s) for s in steps]
    assert all(0 < len(b) <= batch for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))
    assert all(plan.position(s).epoch == epoch for s in steps)


@given(st.integers(2, 100), st.integers(1, 10), st.integers(0, 1000))
def test_batches_depend_only_on_seed_and_step(n: int, batch: int, seed: int) -> None:
    """Each batch is the seeded permutation of its epoch, computed here independently of the
    plan's cache, and another seed orders the examples differently."""
    plan = BatchPlan(n, batch, seed)
    for step in (0, 3, 17):
        epoch, in_epoch = divmod(step, plan.steps_per_epoch)
        expected = np.random.default_rng([seed, epoch]).permutation(n)
        start = in_epoch * batch
        np.testing.assert_array_equal(plan.indices(step), expected[start : start + batch])
    if n >= 8:  # 8! orders: two seeds agreeing on all of them is not a coincidence to allow
        others = [BatchPlan(n, batch, seed + k).epoch_order(0) for k in (1, 2)]
        assert any(not np.array_equal(plan.epoch_order(0), o) for o in others)


def test_epochs_are_shuffled_differently_and_drop_last() -> None:
    plan = BatchPlan(100, 10, seed=3)
    assert not np.array_equal(plan.epoch_order(0), plan.epoch_order(1))
    assert BatchPlan(10, 4, drop_last=True).steps_per_epoch == 2
    assert BatchPlan(10, 4).steps_per_epoch == 3
    assert BatchPlan(10, 4, shuffle=False).indices(1).tolist() == [4, 5, 6, 7]
    assert total_steps(BatchPlan(10, 4), num_epochs=2, max_steps=None) == 6
    assert total_steps(BatchPlan(10, 4), num_epochs=2, max_steps=50) == 50
    with pytest.raises(ValidationError, match="batch_size"):
        BatchPlan(3, 8, drop_last=True)
