"""Bounded retries with exponential backoff, for errors marked transient."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import attrs

from galley.core.checks import at_least, int_at_least
from galley.core.errors import TransientError

T = TypeVar("T")


@attrs.frozen
class RetryPolicy:
    """``max_attempts`` tries in all (1 = no retry); the k-th retry waits
    ``min(max_backoff_s, initial_backoff_s * multiplier**(k-1))`` seconds."""

    max_attempts: int = attrs.field(default=3, validator=int_at_least(1))
    initial_backoff_s: float = attrs.field(default=0.05, validator=at_least(0.0))
    multiplier: float = attrs.field(default=2.0, validator=at_least(1.0))
    max_backoff_s: float = attrs.field(default=2.0, validator=at_least(0.0))
    retry_on: tuple[type[BaseException], ...] = (TransientError,)

    def backoff(self, retry: int) -> float:
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))

    def is_transient(self, error: BaseException) -> bool:
        return isinstance(error, self.retry_on)


NO_RETRY = RetryPolicy(max_attempts=1)


def call_with_retry(
    policy: RetryPolicy,
    fn: Callable[[], T],
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, retried on transient errors; the last error propagates when attempts run out."""
    attempt = 1
    while True:
        try:
            return fn()
        except BaseException as error:
            if attempt >= policy.max_attempts or not policy.is_transient(error):
                raise
            delay = policy.backoff(attempt)
            if on_retry is not None:
                on_retry(attempt, error, delay)
            sleep(delay)
            attempt += 1
