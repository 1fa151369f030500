"""Composable wrappers for any adapter of any port: inject faults, retry transient errors.

    blobs = with_retries(with_faults(FsspecBlobStore("runs"), Faults(failure_rate=0.1)), policy)

Both wrap every public method; objects a method returns that are themselves adapters of a
sort (the session ``start_session`` returns) are wrapped too. Retries apply to failures raised
when a call is made, not to failures inside returned futures: a request that reached the
backend (a gradient accumulated) must not be repeated blindly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from galley.adapters.helpers.faults import FaultInjector, Faults
from galley.core.retry import RetryPolicy, call_with_retry

WRAPPED_RESULTS = ("start_session",)  # methods whose result is wrapped like its parent

log = structlog.get_logger("galley")


class _Proxy:
    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self._name = name

    def _call(self, method: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _rewrap(self, inner: Any, name: str) -> Any:
        raise NotImplementedError

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if attr.startswith("_") or not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._call(attr, value, *args, **kwargs)
            return (
                self._rewrap(result, f"{self._name}.{attr}") if attr in WRAPPED_RESULTS else result
            )

        return call

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r})"


class FaultyAdapter(_Proxy):
    """Every call may fail with ``InjectedFaultError`` (transient) before reaching ``inner``,
    or be delayed: seeded, so a run's faults repeat. ``mid_write_failure_rate`` makes a
    BlobStore's ``write`` store only the first half of the bytes and then fail, as a store
    without atomic writes would when a connection drops."""

    def __init__(
        self, inner: Any, faults: Faults, name: str = "adapter", mid_write_failure_rate: float = 0.0
    ) -> None:
        super().__init__(inner, name)
        self._faults = faults
        self._injector = FaultInjector(faults)
        self._mid_write = FaultInjector(Faults(mid_write_failure_rate, 0.0, faults.seed + 1))

    @classmethod
    def _sharing(cls, parent: FaultyAdapter, inner: Any, name: str) -> FaultyAdapter:
        """A wrapper for an object a wrapped method returned: one seeded fault sequence."""
        child = cls(inner, parent._faults, name)
        child._injector, child._mid_write = parent._injector, parent._mid_write
        return child

    @property
    def injected(self) -> int:
        return self._injector.injected + self._mid_write.injected

    def _call(self, method: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._injector(f"{self._name}.{method}")
        if method == "write" and self._mid_write.faults.failure_rate:
            try:
                self._mid_write(f"{self._name}.write (mid-write)")
            except Exception:
                key, data = args[0], args[1]
                fn(key, data[: len(data) // 2])
                raise
        return fn(*args, **kwargs)

    def _rewrap(self, inner: Any, name: str) -> Any:
        return FaultyAdapter._sharing(self, inner, name)


class RetryingAdapter(_Proxy):
    """Retries calls that raise a transient error, with the policy's bounded backoff."""

    def __init__(self, inner: Any, policy: RetryPolicy, name: str = "adapter") -> None:
        super().__init__(inner, name)
        self._policy = policy

    def _call(self, method: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def on_retry(attempt: int, error: BaseException, delay: float) -> None:
            log.warning(
                "adapter.retry",
                adapter=self._name,
                method=method,
                attempt=attempt,
                delay_s=delay,
                error=str(error),
            )

        return call_with_retry(self._policy, lambda: fn(*args, **kwargs), on_retry)

    def _rewrap(self, inner: Any, name: str) -> Any:
        return RetryingAdapter(inner, self._policy, name)


def with_faults(
    adapter: Any, faults: Faults, name: str = "adapter", mid_write_failure_rate: float = 0.0
) -> Any:
    return FaultyAdapter(adapter, faults, name, mid_write_failure_rate)


def with_retries(adapter: Any, policy: RetryPolicy, name: str = "adapter") -> Any:
    return RetryingAdapter(adapter, policy, name)
