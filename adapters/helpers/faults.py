"""Seeded fault injection for the noop adapters: random transient failures and latency."""

from __future__ import annotations

import random
import threading
import time

import attrs

from galley.core.checks import at_least, in_range
from galley.core.errors import TransientError


class InjectedFaultError(TransientError):
    """A failure injected on purpose (it is transient: a retry may succeed)."""


@attrs.frozen
class Faults:
    failure_rate: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    latency_s: float = attrs.field(default=0.0, validator=at_least(0.0))
    seed: int = 0


class FaultInjector:
    """Thread-safe; the n-th call fails or not as a function of the seed alone."""

    def __init__(self, faults: Faults | None) -> None:
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self.injected = 0

    def __call__(self, operation: str) -> None:
        if self.faults.latency_s:
            time.sleep(self.faults.latency_s)
        if not self.faults.failure_rate:
            return
        with self._lock:
            fail = self._rng.random() < self.faults.failure_rate
            if fail:
                self.injected += 1
        if fail:
            raise InjectedFaultError(f"injected transient failure in {operation}")
