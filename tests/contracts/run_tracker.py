"""The RunTracker contract: what every experiment-tracker sink guarantees."""

from __future__ import annotations

import structlog

from galley.core import MetricRecord, TrackedRun
from galley.ports import MetricsSink, RunTracker

RUN = TrackedRun("contract", "sft", {"learning_rate": 0.001, "lora": {"rank": 8}})


class RunTrackerContract:
    name: str  # the tracker's name: its links' prefix

    def make(self) -> RunTracker:
        raise NotImplementedError

    def test_implements_the_port(self) -> None:
        tracker = self.make()
        assert isinstance(tracker, RunTracker) and isinstance(tracker, MetricsSink)

    def test_links_name_the_tracker_and_opening_again_changes_nothing(self) -> None:
        tracker = self.make()
        links = dict(tracker.open_run(RUN))
        assert links and all(k.startswith(f"{self.name}.") for k in links)
        assert all(isinstance(v, str) and v for v in links.values())
        assert tracker.open_run(RUN) == links  # a retried stage must not start a second run
        tracker.end_run("finished")

    def test_a_run_goes_from_open_to_end_without_a_warning(self) -> None:
        tracker = self.make()
        with structlog.testing.capture_logs() as logs:
            tracker.open_run(RUN)
            for step in range(1, 4):
                tracker.record(MetricRecord(RUN.run_id, "train", step, {"loss": 1.0 / step}))
            tracker.record(MetricRecord(RUN.run_id, "eval", 3, {"eval/nll": 0.5}))
            tracker.flush()
            tracker.end_run("finished")
        assert [e for e in logs if e["log_level"] == "warning"] == []

    def test_ending_a_run_never_opened_does_nothing(self) -> None:
        tracker = self.make()
        with structlog.testing.capture_logs() as logs:
            tracker.end_run("failed")
            tracker.flush()
        assert [e for e in logs if e["log_level"] == "warning"] == []

    def test_rows_without_an_open_run_open_it(self) -> None:
        tracker = self.make()
        tracker.record(MetricRecord("rows-only", "train", 1, {"loss": 1.0}))
        tracker.flush()
        assert tracker.open_run(TrackedRun("rows-only", "sft"))  # the run rows opened
        tracker.end_run("finished")
