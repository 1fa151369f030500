"""A base for experiment-tracker sinks (W&B, MLflow, TensorBoard, or your own).

A subclass says how to open the tracker's run, send it rows and end it; this class gives every
tracker the same behaviour around that:

- it never fails the training run: the first failure (the library not installed, no network,
  a full disk) is logged once, with the reason, and the tracker drops out; later calls do
  nothing, and the other sinks go on;
- rows are sent in batches, at most ``send_every_s`` apart, and all of them at ``flush``;
- a row of a run nobody opened opens it (with what the row says), so a tracker also works
  under code that only records rows;
- opening the run that is open already is a no-op that returns the same links (a stage that
  is retried must not start a second tracker run).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

import structlog

from galley.adapters.helpers.redaction import redact_text
from galley.core.configs import flatten_keys
from galley.core.runs.records import MetricRecord, RunOutcome, TrackedRun

Scalar = bool | int | float | str


def metric_key(stream: str, name: str) -> str:
    """``train/loss`` for the train stream's ``loss``; a name that already starts with its
    stream (``eval/nll``) is kept as it is."""
    return name if name.startswith(f"{stream}/") else f"{stream}/{name}"


def hyperparameters(config: Mapping[str, Any]) -> dict[str, Scalar]:
    """Settings as flat ``a.b`` keys with scalar values, for trackers whose hyperparameters
    are flat: lists and other values become JSON text; None is left out."""
    flat: dict[str, Scalar] = {}
    for name, value in flatten_keys(config).items():
        if isinstance(value, bool | int | str) or (
            isinstance(value, float) and math.isfinite(value)
        ):
            flat[name] = value
        elif value is not None:
            flat[name] = json.dumps(value, default=str)
    return flat


class Tracker:
    """A ``RunTracker`` metrics sink over a tracker library; see the module docstring.

    Subclasses set ``name`` and implement ``_open`` (returning the links to save with the
    run, keys starting with ``name + "."``), ``_send`` and ``_end``."""

    name: ClassVar[str] = "tracker"
    send_every_s: float = 0.0  # 0: send each row as it comes
    # How long opening a run may take (a server that does not answer, retried for minutes
    # by its client): past it the tracker drops out and training starts. 0: no bound.
    open_timeout_s: float = 0.0

    def __init__(self) -> None:
        self.dropped: str | None = None  # why the tracker dropped out, once it has
        self._lock = threading.RLock()
        self._rows: list[MetricRecord] = []
        self._run: TrackedRun | None = None
        self._links: dict[str, str] = {}
        self._sent_at = 0.0

    @property
    def log(self) -> Any:
        # Looked up when used, not bound once: the logging set up then is the one that counts.
        return structlog.get_logger("galley").bind(tracker=self.name)

    # -- for subclasses -------------------------------------------------------------------

    def _open(self, run: TrackedRun) -> Mapping[str, str]:
        raise NotImplementedError

    def _send(self, rows: Sequence[MetricRecord]) -> None:
        raise NotImplementedError

    def _end(self, outcome: RunOutcome) -> None:
        raise NotImplementedError

    def _persist(self) -> None:
        """Make what was sent durable (at ``flush``), if sending alone does not."""

    def _release(self) -> None:
        """Free what the tracker holds after it dropped out (best effort, errors ignored)."""

    def _import(self, module: str, extra: str) -> ModuleType | None:
        """The tracker's library, or None (dropped out) when it cannot be imported."""
        try:
            return importlib.import_module(module)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            if isinstance(error, ModuleNotFoundError):
                reason = f"{module} is not installed (pip install 'galley[{extra}]')"
            self._drop("import", reason)
            return None

    # -- the RunTracker port ------------------------------------------------------------

    def open_run(self, run: TrackedRun) -> Mapping[str, str]:
        with self._lock:
            if self._run is not None and self._run.run_id == run.run_id:
                return dict(self._links)
            self._switch_to(run)
            return dict(self._links) if self._run is not None else {}

    def record(self, record: MetricRecord) -> None:
        with self._lock:
            if self.dropped is not None:
                return
            self._rows.append(record)
            if time.monotonic() - self._sent_at >= self.send_every_s:
                self._send_rows()

    def flush(self) -> None:
        with self._lock:
            self._send_rows()
            if self._run is not None:
                self._guarded("flush", self._persist)

    def end_run(self, outcome: RunOutcome) -> None:
        with self._lock:
            self._send_rows()
            if self._run is not None:
                self._guarded("end_run", lambda: self._end(outcome))
            self._run, self._links = None, {}

    # -- the machinery ------------------------------------------------------------------

    def _switch_to(self, run: TrackedRun) -> None:
        if self.dropped is not None:
            return
        if self._run is not None:  # one tracker run at a time: the earlier one is done
            self._guarded("end_run", lambda: self._end("finished"))
            self._run, self._links = None, {}
        links = self._guarded("open_run", lambda: self._bounded_open(run))
        if links is not None and self.dropped is None:
            self._run, self._links = run, links
            self.log.info("tracker.opened", run_id=run.run_id, resumed=run.resumed, **links)

    def _bounded_open(self, run: TrackedRun) -> dict[str, str]:
        """``_open(run)``, given at most ``open_timeout_s``: a call still waiting then is left
        to finish in the background, and its tracker has dropped out."""
        if not self.open_timeout_s:
            return dict(self._open(run))
        outcome: dict[str, Any] = {}

        def attempt() -> None:
            try:
                outcome["links"] = dict(self._open(run))
            except Exception as error:
                outcome["error"] = error

        worker = threading.Thread(target=attempt, name=f"{self.name}-open", daemon=True)
        worker.start()
        worker.join(self.open_timeout_s)
        if worker.is_alive():
            raise TimeoutError(f"opening the run took more than {self.open_timeout_s:g} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["links"]  # type: ignore[no-any-return]

    def _send_rows(self) -> None:
        self._sent_at = time.monotonic()
        while self._rows and self.dropped is None:
            batch = _first_run_rows(self._rows)
            if self._run is None or self._run.run_id != batch[0].run_id:
                self._switch_to(TrackedRun(batch[0].run_id, workflow=""))
            if self._guarded("send", functools.partial(self._send, batch)) is None:
                return
            del self._rows[: len(batch)]

    def _guarded(self, call: str, action: Any) -> Any:
        """``action()``, or None after dropping out when it fails."""
        if self.dropped is not None:
            return None
        try:
            result = action()
        except Exception as error:
            self._drop(call, f"{type(error).__name__}: {error}")
            return None
        return True if result is None else result

    def _drop(self, call: str, reason: str) -> None:
        self.dropped = redact_text(reason)
        self.log.warning(
            "metrics.tracker_dropped",
            call=call,
            reason=self.dropped,
            rows_not_sent=len(self._rows),
            note="training and the other metrics sinks go on",
        )
        self._rows = []
        with contextlib.suppress(Exception):  # dropped out: a failed clean-up changes nothing
            self._release()


def _first_run_rows(rows: Sequence[MetricRecord]) -> list[MetricRecord]:
    """The leading rows that belong to the first row's run."""
    run_id = rows[0].run_id
    return list(itertools.takewhile(lambda r: r.run_id == run_id, rows))
