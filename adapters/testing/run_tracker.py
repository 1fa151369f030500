"""The RunTracker contract: what every experiment-tracker sink guarantees. Subclass it, set
``name`` (your tracker's, the prefix of its links) and define ``make_tracker(tmp_path)``."""

from __future__ import annotations

from pathlib import Path

import structlog

from galley.adapters.testing.contract import Contract
from galley.core import MetricRecord, TrackedRun
from galley.ports import MetricsSink, RunTracker

RUN = TrackedRun("contract", "sft", {"learning_rate": 0.001, "lora": {"rank": 8}})


class RunTrackerContract(Contract):
    port = "RunTracker"
    name: str  # the tracker's name: its links' prefix

    def make_tracker(self, tmp_path: Path) -> RunTracker:
        raise NotImplementedError

    def make(self) -> RunTracker:
        return self.make_tracker(self.fresh_folder())

    def test_implements_the_port(self) -> None:
        """It is a MetricsSink with open_run and end_run."""
        tracker = self.make()
        assert isinstance(tracker, RunTracker) and isinstance(tracker, MetricsSink)

    def test_links_name_the_tracker_and_opening_again_changes_nothing(self) -> None:
        """open_run returns what to save with the run, under keys prefixed with the tracker's
        name; opening the open run again starts no second tracker run."""
        tracker = self.make()
        links = dict(tracker.open_run(RUN))
        assert links and all(k.startswith(f"{self.name}.") for k in links)
        assert all(isinstance(v, str) and v for v in links.values())
        assert tracker.open_run(RUN) == links  # a retried stage must not start a second run
        tracker.end_run("finished")

    def test_a_run_goes_from_open_to_end_without_a_warning(self) -> None:
        """A run opened, given rows, flushed and ended raises nothing and warns of nothing."""
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
        """end_run and flush with no run open do nothing (a run that failed before it
        started ends them too)."""
        tracker = self.make()
        with structlog.testing.capture_logs() as logs:
            tracker.end_run("failed")
            tracker.flush()
        assert [e for e in logs if e["log_level"] == "warning"] == []
