"""A session's request queue: one worker thread, so requests run in submission order."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from galley.core.errors import GalleyError

T = TypeVar("T")


class RequestQueue:
    """Runs submitted callables one at a time, in order, returning futures. After ``close``
    (which waits for queued work) new submissions are refused."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._closed = False
        self._name = name

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise GalleyError(f"{self._name} is closed; start a new session")
        return self._executor.submit(fn)

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)
