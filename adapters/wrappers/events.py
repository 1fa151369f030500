"""Every port call as events: a start, an end with its duration, or an error.

``with_events(adapter, port, *sinks)`` wraps any adapter like the retry wrapper does (the
sessions ``start_session`` returns too). A call that returns a future ends when the future
is done, not when it is submitted, so pipelined requests overlap as they do on the backend.
Sinks: ``log_call`` (structlog events ``port.call.start`` / ``port.call.end`` /
``port.call.error``; ``[adapters.<port>] events = true``) and ``TraceRecorder``, which also
follows the stages and writes a Chrome / Perfetto trace (``galley run --trace FILE``)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import structlog

from galley.adapters.wrappers.resilience import _Proxy

log = structlog.get_logger("galley")

# (port, method, call id, "start" | "end" | "error", perf_counter seconds, error or None)
CallSink = Callable[[str, str, int, str, float, BaseException | None], None]
_ids = itertools.count(1)


class ObservedAdapter(_Proxy):
    def __init__(self, inner: Any, port: str, sinks: tuple[CallSink, ...], name: str) -> None:
        super().__init__(inner, name)
        self._port, self._sinks = port, sinks

    def _emit(self, method: str, call: int, phase: str, error: BaseException | None) -> None:
        now = time.perf_counter()
        for sink in self._sinks:
            sink(self._port, method, call, phase, now, error)

    def _call(self, method: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        call = next(_ids)
        self._emit(method, call, "start", None)
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            self._emit(method, call, "error", error)
            raise
        if isinstance(result, Future):

            def done(future: Future[Any]) -> None:
                error = future.exception() if not future.cancelled() else None
                self._emit(method, call, "error" if error else "end", error)

            result.add_done_callback(done)
        else:
            self._emit(method, call, "end", None)
        return result

    def _rewrap(self, inner: Any, name: str) -> Any:
        return ObservedAdapter(inner, self._port, self._sinks, name)


def with_events(adapter: Any, port: str, *sinks: CallSink) -> Any:
    return ObservedAdapter(adapter, port, sinks, port)


class _LogSink:
    """Port calls as structlog events, each end with its duration."""

    def __init__(self) -> None:
        self._started: dict[int, float] = {}

    def __call__(
        self, port: str, method: str, call: int, phase: str, t: float, error: BaseException | None
    ) -> None:
        if phase == "start":
            self._started[call] = t
            log.debug("port.call.start", port=port, method=method, call=call)
            return
        duration = round(t - self._started.pop(call, t), 6)
        if error is None:
            log.info("port.call.end", port=port, method=method, call=call, duration_s=duration)
        else:
            log.warning(
                "port.call.error",
                port=port,
                method=method,
                call=call,
                duration_s=duration,
                error=f"{type(error).__name__}: {error}",
            )


def log_call() -> CallSink:
    return _LogSink()


class TraceRecorder:
    """Chrome trace events (JSON, loads in Perfetto and chrome://tracing) for the stages a
    run goes through and the port calls it makes. Stages run one at a time: complete events
    on one track. Port calls overlap when pipelined: async begin/end pairs, one track per
    port. An observer of the run (stages) and a sink of ``with_events`` (port calls)."""

    def __init__(self) -> None:
        self._origin = time.perf_counter()
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _us(self, t: float) -> float:
        return round((t - self._origin) * 1e6, 3)

    def __call__(
        self, port: str, method: str, call: int, phase: str, t: float, error: BaseException | None
    ) -> None:
        event: dict[str, Any] = {
            "name": f"{port}.{method}",
            "cat": port,
            "ph": "b" if phase == "start" else "e",
            "id": call,
            "ts": self._us(t),
            "pid": 1,
            "tid": 2,
        }
        if error is not None:
            event["args"] = {"error": f"{type(error).__name__}: {error}"}
        with self._lock:
            self._events.append(event)

    # -- the run's observer -------------------------------------------------------------

    def on_stage(self, stage: str, step: int | None, started: float, ended: float) -> None:
        args = {} if step is None else {"step": step}
        event = {
            "name": stage,
            "cat": "stage",
            "ph": "X",
            "ts": self._us(started),
            "dur": round((ended - started) * 1e6, 3),
            "pid": 1,
            "tid": 1,
            "args": args,
        }
        with self._lock:
            self._events.append(event)

    def on_loop_start(self, loop: str, done: int, total: int) -> None:
        pass

    def on_iteration_end(self, loop: str, counter: int) -> None:
        pass

    def on_metrics(self, stream: str, step: int, metrics: Mapping[str, float]) -> None:
        pass

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def write(self, path: str | Path) -> None:
        names = [
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": t, "args": {"name": n}}
            for t, n in ((1, "stages"), (2, "port calls"))
        ]
        document = {"traceEvents": names + self.events, "displayTimeUnit": "ms"}
        Path(path).write_text(json.dumps(document))


PORTS = ("training", "datasets", "blobs", "hub", "metrics", "completer")


def traced(adapters: Any, recorder: TraceRecorder) -> Any:
    """``adapters`` with every port's calls recorded by ``recorder``."""
    return adapters.replace(
        **{port: with_events(getattr(adapters, port), port, recorder) for port in PORTS}
    )
