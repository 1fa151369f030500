"""A session's request queue: requests run one at a time, in submission order, behind futures.

``RequestQueue`` runs them on one worker thread, so the caller can prepare the next request
while a device works on this one. ``ImmediateQueue`` runs each request as it is submitted, in
the caller's thread: the behaviour of an instant server, for fakes whose work takes
microseconds and would be dwarfed by a thread hand-off.
"""

from __future__ import annotations

import threading
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


class ImmediateQueue:
    """Runs each callable when it is submitted and returns its already-resolved future; a
    failure is set on the future, as a worker thread would. Same contract as RequestQueue."""

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()  # callers on several threads still run one at a time
        self._closed = False
        self._name = name

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise GalleyError(f"{self._name} is closed; start a new session")
        future: Future[T] = Future()
        with self._lock:
            try:
                result = fn()
            except Exception as error:  # delivered through the future, as from a worker
                future.set_exception(error)
            else:
                future.set_result(result)
        return future

    def close(self) -> None:
        self._closed = True
