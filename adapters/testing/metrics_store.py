"""The MetricsStore contract (a sink whose rows read back). Subclass it and define
``make_store(tmp_path)``."""

from __future__ import annotations

import threading
from pathlib import Path

from galley.adapters.testing.contract import Contract
from galley.core import MetricRecord
from galley.ports import MetricsStore


class MetricsStoreContract(Contract):
    port = "MetricsStore"

    def make_store(self, tmp_path: Path) -> MetricsStore:
        """A new, empty store (``tmp_path`` is a fresh folder it may keep its rows in)."""
        raise NotImplementedError

    def store(self) -> MetricsStore:
        return self.make_store(self.fresh_folder())

    def test_implements_the_port(self) -> None:
        """It has every method of the port (record, flush, read)."""
        assert isinstance(self.store(), MetricsStore)

    def test_read_returns_what_record_wrote_in_order(self) -> None:
        """read: every flushed row of the run in record order, as recorded (stream, step,
        metrics, time); [] for an unknown run."""
        store = self.store()
        written = [
            MetricRecord("run-a", "train", 1, {"loss": 2.5, "lr": 1e-4}, 10.0),
            MetricRecord("run-b", "train", 1, {"loss": 9.0}, 11.0),
            MetricRecord("run-a", "eval", 1, {"eval/nll": 3.0}, 12.0),
            MetricRecord("run-a", "train", 2, {"skipped": 1.0, "tokens": 40.0}, 13.0),
        ]
        for record in written:
            store.record(record)
        store.flush()
        assert store.read("run-a") == [r for r in written if r.run_id == "run-a"]
        assert store.read("missing") == []

    def test_the_stream_is_kept_not_inferred(self) -> None:
        """Each row carries the stream its writer gave it: a train row without a loss (a
        skipped step) is still a train row, and an eval row named like a train metric is
        still an eval row."""
        store = self.store()
        store.record(MetricRecord("r", "train", 3, {"skipped": 1.0}))
        store.record(MetricRecord("r", "eval", 3, {"loss": 1.0}))
        store.record(MetricRecord("r", "rollouts", 3, {"reward": 0.5}))
        store.flush()
        assert [(r.stream, dict(r.metrics)) for r in store.read("r")] == [
            ("train", {"skipped": 1.0}),
            ("eval", {"loss": 1.0}),
            ("rollouts", {"reward": 0.5}),
        ]

    def test_concurrent_records_are_all_kept(self) -> None:
        """record from several threads: after flush every recorded row is durable, each
        thread's rows in its order."""
        store = self.store()

        def work(worker: int) -> None:
            for step in range(50):
                store.record(MetricRecord("run", "train", step, {"worker": float(worker)}))

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.flush()
        rows = store.read("run")
        assert len(rows) == 200
        for w in range(4):
            assert [r.step for r in rows if r.metrics["worker"] == w] == list(range(50))
