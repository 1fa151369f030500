"""A session's request queue: requests run one at a time, in submission order, behind futures.

``RequestQueue`` runs them on one worker thread, so the caller can prepare the next request
while a device works on this one. A request may return ``Deferred``: its work is dispatched
to the device and only copying the result to the host remains. The worker then dispatches the
requests queued behind it before finishing it, so the device goes from one step's gradient
to its optimizer update to the next step's gradient without waiting on the host.

``ImmediateQueue`` runs each request as it is submitted, in the caller's thread: the
behaviour of an instant server, for fakes whose work takes microseconds and would be dwarfed
by a thread hand-off.
"""

from __future__ import annotations

import atexit
import collections
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from galley.core.errors import GalleyError

T = TypeVar("T")

# Requests dispatched but not yet finished; bounds device memory held by results in flight.
MAX_UNFINISHED = 4


class Deferred(Generic[T]):
    """A request's result that is still on the device; ``finish()`` brings it to the host."""

    def __init__(self, finish: Callable[[], T]) -> None:
        self.finish = finish


Job = tuple[Callable[[], Any], "Future[Any]"]

_open_queues: weakref.WeakSet[RequestQueue] = weakref.WeakSet()


@atexit.register
def _close_open_queues() -> None:
    """At interpreter exit, finish what sessions never closed still have queued (a save
    submitted and not awaited, say), as a thread pool would; the worker threads are daemons
    so that an unclosed queue never blocks exit."""
    for open_queue in list(_open_queues):
        open_queue.close()


class RequestQueue:
    """Runs submitted callables one at a time, in order, on a worker thread, returning futures
    that resolve in submission order. After ``close`` (which waits for queued work) new
    submissions are refused."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._closed = False
        self._name = name
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()
        _open_queues.add(self)

    def submit(self, fn: Callable[[], T | Deferred[T]]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise GalleyError(f"{self._name} is closed; start a new session")
            self._jobs.put((fn, future))
        return future

    def close(self, *, timeout: float | None = None) -> None:
        """Refuse new requests; return once the queued ones have run, or after ``timeout``
        seconds if that comes first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        if threading.current_thread() is not self._worker:  # a done-callback may close it
            self._worker.join(timeout)

    def _work(self) -> None:
        unfinished: collections.deque[tuple[Deferred[Any], Future[Any]]] = collections.deque()
        while True:
            try:
                # Block only when nothing waits to be finished; otherwise dispatch what is
                # already queued first, and finish the oldest when the queue is empty.
                job = self._jobs.get(block=not unfinished)
            except queue.Empty:
                _finish(*unfinished.popleft())
                continue
            if job is None:
                break
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as error:  # delivered through the future, in order
                _finish_all(unfinished)
                future.set_exception(error)
                continue
            if isinstance(result, Deferred):
                unfinished.append((result, future))
                if len(unfinished) > MAX_UNFINISHED:
                    _finish(*unfinished.popleft())
            else:
                _finish_all(unfinished)
                future.set_result(result)
        _finish_all(unfinished)


def _finish(deferred: Deferred[Any], future: Future[Any]) -> None:
    try:
        future.set_result(deferred.finish())
    except BaseException as error:
        future.set_exception(error)


def _finish_all(unfinished: collections.deque[tuple[Deferred[Any], Future[Any]]]) -> None:
    while unfinished:
        _finish(*unfinished.popleft())


class ImmediateQueue:
    """Runs each callable when it is submitted and returns its already-resolved future; a
    failure is set on the future, as a worker thread would. Same contract as RequestQueue."""

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()  # callers on several threads still run one at a time
        self._closed = False
        self._name = name

    def submit(self, fn: Callable[[], T | Deferred[T]]) -> Future[T]:
        if self._closed:
            raise GalleyError(f"{self._name} is closed; start a new session")
        future: Future[T] = Future()
        with self._lock:
            try:
                result = fn()
                future.set_result(result.finish() if isinstance(result, Deferred) else result)
            except Exception as error:  # delivered through the future, as from a worker
                future.set_exception(error)
        return future

    def close(self) -> None:
        self._closed = True
