"""Requests in flight: each answers at once with a request id, and its result is fetched by
long-polling ``retrieve_future``. A model's requests run in the order of their ``seq_id``,
whatever order they arrive in, and a repeated ``seq_id`` (a retry) gets the first request's
id back: it is never applied twice."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import attrs
from tinker import types as tt

from galley.adapters.serve.errors import bad_request, busy, not_found

# A result: protobuf bytes, or a JSON object.
Reply = bytes | Mapping[str, Any]


@attrs.define(eq=False)
class Pending:
    request_id: str
    tenant: str
    result: Future[Reply] = attrs.field(factory=Future)
    done_at: float | None = None


class RequestTable:
    """Every request's future, by id, until ``keep_s`` after it finished. Bounded: past
    ``max_requests`` unfinished ones, new requests get 429 (the SDK backs off and retries);
    past ``max_kept`` in all, the oldest finished results are dropped early."""

    def __init__(self, max_requests: int = 4096, keep_s: float = 600.0) -> None:
        self.max_requests, self.keep_s = max_requests, keep_s
        self.max_kept = 4 * max_requests
        self._requests: dict[str, Pending] = {}  # in the order they were opened
        self._unfinished = 0
        self._lock = threading.Lock()

    def open(self, tenant: str) -> Pending:
        with self._lock:
            if self._unfinished >= self.max_requests:
                raise busy(f"{self._unfinished} requests are in flight; retry later")
            if len(self._requests) >= self.max_kept:
                self._drop_finished(len(self._requests) - self.max_kept + 1)
            pending = Pending(uuid.uuid4().hex, tenant)
            self._requests[pending.request_id] = pending
            self._unfinished += 1
        pending.result.add_done_callback(lambda _: self._finished(pending))
        return pending

    def _finished(self, pending: Pending) -> None:
        with self._lock:
            pending.done_at = time.monotonic()
            self._unfinished -= 1

    def _drop_finished(self, count: int) -> None:
        for request_id in [k for k, p in self._requests.items() if p.done_at is not None][:count]:
            del self._requests[request_id]

    def get(self, request_id: str, tenant: str) -> Pending:
        with self._lock:
            pending = self._requests.get(request_id)
        if pending is None or pending.tenant != tenant:
            raise not_found(f"request {request_id!r}")
        return pending

    def prune(self) -> None:
        now = time.monotonic()
        with self._lock:
            for request_id, p in list(self._requests.items()):
                if p.done_at is not None and now - p.done_at > self.keep_s:
                    del self._requests[request_id]


async def wait_for(pending: Pending, timeout: float) -> Reply | None:
    """The result, or None if it is not ready within ``timeout`` seconds (answer try_again)."""
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(pending.result)), timeout)
    except TimeoutError:
        return None


class ModelQueue:
    """One model's requests, started in ``seq_id`` order (1, 2, ...); a request without one
    starts at once. Holds at most ``max_waiting`` requests for a gap to fill. ``start`` must
    not raise: it fails its own request instead."""

    def __init__(self, max_waiting: int = 256, remember: int = 4096) -> None:
        self.next_seq = 1
        self.max_waiting, self.remember = max_waiting, remember
        self._ids: dict[int, str] = {}  # seq_id -> request id, for retries
        self._waiting: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()

    def seen(self, seq_id: int | None) -> str | None:
        """The request id a retried ``seq_id`` already got; a ``seq_id`` that ran so long ago
        it was forgotten is refused rather than run again."""
        if seq_id is None:
            return None
        with self._lock:
            if seq_id in self._ids:
                return self._ids[seq_id]
            if seq_id < self.next_seq:
                raise bad_request(f"seq_id {seq_id} already ran")
        return None

    def put(self, seq_id: int | None, request_id: str, start: Callable[[], None]) -> None:
        if seq_id is not None and seq_id < 1:
            raise bad_request(f"seq_id must be 1 or more, got {seq_id}")
        with self._lock:
            if seq_id is None:
                start()
                return
            if len(self._waiting) >= self.max_waiting:
                raise busy(f"{len(self._waiting)} requests wait for an earlier seq_id")
            self._ids[seq_id] = request_id
            self._waiting[seq_id] = start
            # Started under the lock, so two threads never start out of order; a start only
            # hands its work to the model's own queue (and never raises).
            while self.next_seq in self._waiting:
                self._waiting.pop(self.next_seq)()
                self.next_seq += 1
            if len(self._ids) > 2 * self.remember:  # now and then, not on every request
                for old in [s for s in self._ids if s < self.next_seq - self.remember]:
                    del self._ids[old]


def settle(pending: Pending, work: Future[Any], encode: Callable[[Any], Reply]) -> None:
    """Resolve ``pending`` with ``encode(result)`` of ``work``, or with its failure."""

    def done(f: Future[Any]) -> None:
        error = f.exception()
        if error is not None:
            pending.result.set_exception(error)
            return
        try:
            pending.result.set_result(encode(f.result()))
        except Exception as e:  # an encoding failure fails this request, never the server
            pending.result.set_exception(e)

    work.add_done_callback(done)


__all__ = ["ModelQueue", "Pending", "Reply", "RequestTable", "settle", "wait_for"]


def future_reply(request_id: str, model_id: str | None = None) -> dict[str, Any]:
    """What an asynchronous endpoint answers at once: the id to fetch its result by."""
    return tt.UntypedAPIFuture(request_id=request_id, model_id=model_id).model_dump(
        mode="json", exclude_none=True
    )


def chained(first: Future[Any], then: Callable[[Any], Future[Any]]) -> Future[Any]:
    """A future of ``then(first's result)``'s result; a failure of either fails it."""
    out: Future[Any] = Future()

    def second(f: Future[Any]) -> None:
        if f.exception() is not None:
            out.set_exception(f.exception())
        elif not out.done():
            out.set_result(f.result())

    def first_done(f: Future[Any]) -> None:
        if f.exception() is not None:
            out.set_exception(f.exception())
            return
        try:
            then(f.result()).add_done_callback(second)
        except Exception as e:  # refused at submission (a bad datum): this request fails
            out.set_exception(e)

    first.add_done_callback(first_done)
    return out
