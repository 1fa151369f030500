"""JSONL (fsspec) and SQLite metrics stores: the contract, and other processes reading them."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from galley.adapters.fsspec.metrics import JsonlMetricsStore
from galley.adapters.sqlite.metrics import SqliteMetricsStore
from galley.adapters.testing import MetricsStoreContract
from galley.core import ConfigError, MetricRecord, ValidationError

ROW = json.dumps(
    {"run_id": "r", "stream": "train", "step": 3, "metrics": {"loss": 1.0}, "time": 0.0}
).encode()

ROOT = Path(__file__).resolve().parents[1]


class TestJsonlOnDisk(MetricsStoreContract):
    def make_store(self, tmp_path: Path) -> JsonlMetricsStore:
        return JsonlMetricsStore(str(tmp_path))


class TestJsonlInMemory(MetricsStoreContract):
    def make_store(self, tmp_path: Path) -> JsonlMetricsStore:
        return JsonlMetricsStore(f"memory://metrics-{uuid.uuid4().hex}", flush_every=7)


class TestSqlite(MetricsStoreContract):
    def make_store(self, tmp_path: Path) -> SqliteMetricsStore:
        return SqliteMetricsStore(tmp_path / "metrics.db")


def test_jsonl_is_one_readable_line_per_record_while_the_run_goes(tmp_path: Path) -> None:
    store = JsonlMetricsStore(str(tmp_path))
    store.record(MetricRecord("run-1", "train", 1, {"loss": 3.0}))
    store.record(MetricRecord("run-1", "train", 2, {"loss": 2.5}))
    lines = (tmp_path / "run-1" / "metrics.jsonl").read_text().splitlines()  # no flush yet
    assert [json.loads(line)["metrics"]["loss"] for line in lines] == [3.0, 2.5]
    assert [r.step for r in JsonlMetricsStore(str(tmp_path)).read("run-1")] == [1, 2]


WRITER = """
import sys
from galley.adapters.fsspec.metrics import JsonlMetricsStore
from galley.adapters.sqlite.metrics import SqliteMetricsStore
from galley.core import MetricRecord
kind, where, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SqliteMetricsStore(where) if kind == "sqlite" else JsonlMetricsStore(where)
for step in range(100):
    store.record(MetricRecord("shared", "train", step, {"worker": worker, "step": step}))
store.flush()
"""


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_two_processes_write_the_same_store(tmp_path: Path, kind: str) -> None:
    where = str(tmp_path / ("m.db" if kind == "sqlite" else "jsonl"))
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, kind, where, str(w)], cwd=ROOT)
        for w in (1, 2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = SqliteMetricsStore(where) if kind == "sqlite" else JsonlMetricsStore(where)
    rows = store.read("shared")
    assert len(rows) == 200
    for worker in (1, 2):
        assert [r.step for r in rows if r.metrics["worker"] == worker] == list(range(100))


def test_sqlite_rows_are_visible_to_another_process_at_once(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    SqliteMetricsStore(db).record(MetricRecord("r", "train", 7, {"loss": 1.25}))
    code = (
        "from galley.adapters.sqlite.metrics import SqliteMetricsStore as S;"
        f"print(S({str(db)!r}).read('r')[0].metrics['loss'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "1.25"


def test_stores_of_rows_without_a_stream_are_refused_not_guessed(tmp_path: Path) -> None:
    """Rows written before metrics carried their stream: a reader would have to guess it."""
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:
        old.execute(
            "CREATE TABLE metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
            "step INTEGER NOT NULL, time REAL NOT NULL, metrics TEXT NOT NULL)"
        )
    with pytest.raises(ConfigError, match="earlier galley whose rows do not say their stream"):
        SqliteMetricsStore(db)
    (tmp_path / "r").mkdir()
    row = {"run_id": "r", "step": 1, "time": 0.0, "metrics": {"loss": 1.0}}
    (tmp_path / "r" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValidationError, match=r"r/metrics.jsonl, line 1: expected .* stream"):
        JsonlMetricsStore(str(tmp_path)).read("r")


class Tracker:
    """A write-only sink, as an experiment tracker is: no read."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.rows: list[MetricRecord] = []
        self.fail_after = fail_after

    def record(self, record: MetricRecord) -> None:
        if self.fail_after is not None and len(self.rows) >= self.fail_after:
            raise ConnectionError("tracker unreachable")
        self.rows.append(record)

    def flush(self) -> None: ...


def test_a_write_only_sink_is_a_full_metrics_adapter() -> None:
    from galley.adapters.noop import noop_adapters
    from galley.workflows.sft import SFTConfig, run

    tracker = Tracker()
    result = run(SFTConfig(max_steps=3, num_samples=0, run_id="w"), noop_adapters(metrics=tracker))
    assert [r.step for r in tracker.rows if r.stream == "train"] == [1, 2, 3]
    assert len(result.metrics) == 3


def test_several_sinks_get_every_row_and_a_failing_one_is_dropped(tmp_path: Path) -> None:
    """`adapters.metrics = [...]`: each row goes to each sink; reads come from the first that
    reads; a sink that fails is dropped with a warning and the run goes on."""
    import structlog

    from galley.adapters.composition import AdapterChoice, build_adapters
    from galley.adapters.noop import noop_adapters
    from galley.workflows.sft import SFTConfig, run

    choices = {
        "metrics": AdapterChoice(
            "jsonl+noop+flaky",
            parts=(
                AdapterChoice("jsonl", {"url": str(tmp_path)}),
                AdapterChoice("noop"),
                AdapterChoice("tests.test_metrics_stores:flaky_tracker"),
            ),
        )
    }
    metrics = build_adapters(choices).metrics
    flaky = MADE[-1]
    with structlog.testing.capture_logs() as logs:
        result = run(
            SFTConfig(max_steps=4, num_samples=0, run_id="f"), noop_adapters(metrics=metrics)
        )
    assert len(flaky.rows) == 2  # it took two rows, then failed and was dropped
    dropped = [e for e in logs if e["event"] == "metrics.sink_dropped"]
    assert [e["sink"] for e in dropped] == ["tests.test_metrics_stores:flaky_tracker"]
    on_disk = JsonlMetricsStore(str(tmp_path)).read("f")
    assert [r.step for r in on_disk if r.stream == "train"] == [1, 2, 3, 4]
    assert metrics.read("f") == on_disk  # type: ignore[attr-defined]  # the first that reads
    assert [m["step"] for m in result.metrics] == [1, 2, 3, 4]


def test_a_list_of_kinds_parses_from_toml_shapes() -> None:
    from galley.adapters.composition import parse_adapters_table

    choices = parse_adapters_table({"metrics": ["jsonl", {"kind": "sqlite", "path": "m.db"}]})
    assert choices["metrics"].kind == "jsonl+sqlite"
    assert [p.options for p in choices["metrics"].parts] == [{}, {"path": "m.db"}]
    with pytest.raises(ConfigError, match="a list of kinds is for metrics only"):
        parse_adapters_table({"blobs": ["noop", "fsspec"]})


MADE: list[Tracker] = []


def flaky_tracker() -> Tracker:
    """A factory a config names by its path: a tracker that fails after two rows."""
    MADE.append(Tracker(fail_after=2))
    return MADE[-1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"run_id": "r"\xff}\n', "line 1: not UTF-8 text"),
        (b"not json\n", "line 1: not a JSON row"),
        (ROW + b"\n{oops\n" + ROW + b"\n", "line 2: not a JSON row"),
    ],
    ids=["not utf-8", "not json", "a bad line between good ones"],
)
def test_a_damaged_metrics_line_is_named_never_skipped(
    content: bytes, message: str, tmp_path: Path
) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_bytes(content)
    with pytest.raises(ValidationError, match=f"metrics.jsonl, {message}"):
        JsonlMetricsStore(str(tmp_path)).read("r")


def test_a_last_line_still_being_written_is_left_for_later(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_bytes(ROW + b"\n" + ROW[:20])
    (row,) = JsonlMetricsStore(str(tmp_path)).read("r")
    assert row.step == 3
