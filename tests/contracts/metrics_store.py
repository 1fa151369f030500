"""The MetricsStore contract."""

from __future__ import annotations

import threading

from galley.ports import MetricsStore


class MetricsStoreContract:
    def make(self) -> MetricsStore:
        raise NotImplementedError

    def test_implements_the_port(self) -> None:
        assert isinstance(self.make(), MetricsStore)

    def test_read_returns_what_record_wrote_in_order(self) -> None:
        store = self.make()
        store.record("run-a", 1, {"loss": 2.5, "lr": 1e-4})
        store.record("run-b", 1, {"loss": 9.0})
        store.record("run-a", 2, {"loss": 2.25, "lr": 1e-4})
        store.flush()
        rows = store.read("run-a")
        assert [(r.run_id, r.step, dict(r.metrics)) for r in rows] == [
            ("run-a", 1, {"loss": 2.5, "lr": 1e-4}),
            ("run-a", 2, {"loss": 2.25, "lr": 1e-4}),
        ]
        assert store.read("missing") == []

    def test_concurrent_records_are_all_kept(self) -> None:
        store = self.make()

        def work(worker: int) -> None:
            for step in range(50):
                store.record("run", step, {"worker": float(worker)})

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
