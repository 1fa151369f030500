"""TensorBoard: event files under the run's folder, ``<logdir>/<run_id>/tensorboard/``, so
``tensorboard --logdir runs`` shows every run. Written with TensorBoard's own event-file
writer (no TensorFlow needed).

The run's settings are its HParams (flat ``a.b`` names) and, in full, a ``galley/config`` text.
A resume writes into the same folder and first marks a restart at the step it continues from:
TensorBoard then drops what the interrupted attempt logged after its checkpoint, so a step
trained twice shows once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from galley.adapters.helpers.tracker import Tracker, hyperparameters, metric_key
from galley.core.runs.records import MetricRecord, RunOutcome, TrackedRun


@attrs.frozen
class TensorboardOptions:
    logdir: str = "runs"  # event files go to <logdir>/<run_id>/tensorboard/


class TensorboardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, options: TensorboardOptions) -> None:
        super().__init__()
        self.options = options
        self.tensorboard = self._import("tensorboard", "tensorboard")
        self.writer: Any = None

    def _open(self, run: TrackedRun) -> Mapping[str, str]:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        logdir = run.links.get("tensorboard.logdir") or str(
            Path(self.options.logdir, run.run_id, "tensorboard")
        )
        Path(logdir).mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(logdir)
        if run.resumed:
            restart = SessionLog(status=SessionLog.START)
            self.writer.add_event(
                Event(wall_time=time.time(), step=run.start_step + 1, session_log=restart)
            )
        else:
            self._write_settings(run)
        return {"tensorboard.logdir": logdir}

    def _write_settings(self, run: TrackedRun) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from tensorboard.plugins.text.metadata import create_summary_metadata
        from tensorboard.util.tensor_util import make_tensor_proto

        hparams = {"galley_run_id": run.run_id, **hyperparameters(run.config)}
        self.writer.add_event(
            Event(wall_time=time.time(), step=0, summary=hparams_pb(hparams, trial_id=run.run_id))
        )
        text = "```json\n" + json.dumps(dict(run.config), indent=2, sort_keys=True) + "\n```"
        config = Summary.Value(
            tag="galley/config",
            metadata=create_summary_metadata(display_name=None, description=None),
            tensor=make_tensor_proto([text]),
        )
        self.writer.add_event(Event(wall_time=time.time(), step=0, summary=Summary(value=[config])))

    def _send(self, rows: Sequence[MetricRecord]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        for row in rows:
            values = [
                Summary.Value(tag=metric_key(row.stream, k), simple_value=v)
                for k, v in row.metrics.items()
            ]
            self.writer.add_event(
                Event(
                    wall_time=row.time or time.time(), step=row.step, summary=Summary(value=values)
                )
            )

    def _persist(self) -> None:
        self.writer.flush()

    def _end(self, outcome: RunOutcome) -> None:
        writer, self.writer = self.writer, None
        writer.close()

    def _release(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
