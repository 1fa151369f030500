"""Experiment trackers (W&B, MLflow, TensorBoard) as metrics sinks, read back with each
tracker's own reader: the run's settings logged once, every row under its stream at its step,
the tracker's run continued by a resume, and a failing tracker dropping out alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from galley.adapters.composition import build_adapters, parse_adapters_table
from galley.adapters.fsspec.metrics import JsonlMetricsStore
from galley.adapters.helpers.redaction import redact_text
from galley.adapters.helpers.tracker import Tracker, hyperparameters, metric_key
from galley.adapters.testing import RunTrackerContract
from galley.core import Adapters, MetricRecord, RunOutcome, TrackedRun, WorkflowError
from galley.core.runs.run_record import read_run_record
from galley.workflows.sft import SFTConfig, run
from tests.wandb_files import offline_runs

CONFIG = SFTConfig(
    max_steps=8, checkpoint_every=3, eval_every=4, num_samples=2, run_id="t", learning_rate=0.02
)
Rows = dict[tuple[str, int], float]


def trackers(root: Path) -> list[dict[str, Any]]:
    """JSONL (the store) and the three trackers, every file under ``root/runs``."""
    runs = str(root / "runs")
    return [
        {"kind": "jsonl", "url": runs},
        {"kind": "wandb", "dir": runs},
        {"kind": "mlflow", "tracking_uri": f"sqlite:///{root}/runs/mlflow.db"},
        {"kind": "tensorboard", "logdir": runs},
    ]


def adapters_with(root: Path, metrics: list[Any]) -> Adapters:
    table = {"default": "noop", "blobs": {"kind": "fsspec", "url": str(root)}, "metrics": metrics}
    return build_adapters(parse_adapters_table(table))


def last_per_step(rows: Sequence[MetricRecord]) -> Rows:
    """Each metric at each step as a tracker shows it (``train/loss``); a step logged twice
    (trained again after a resume) keeps its last value."""
    return {(metric_key(r.stream, k), r.step): v for r in rows for k, v in r.metrics.items()}


def stored(root: Path, run_id: str = "t") -> list[MetricRecord]:
    return JsonlMetricsStore(str(root / "runs")).read(run_id)


def links(root: Path, run_id: str = "t") -> Mapping[str, str]:
    record = read_run_record(adapters_with(root, ["noop"]), "runs", run_id)
    assert record is not None
    return record.trackers


def mlflow_rows(client: MlflowClient, run_id: str) -> tuple[Rows, list[tuple[str, int]]]:
    """Last value per (metric, step), and every (metric, step) in the order logged."""
    rows: Rows = {}
    logged = []
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            rows[(key, m.step)] = m.value
            logged.append((key, m.step))
    return rows, logged


def tensorboard_rows(logdir: str) -> tuple[Rows, EventAccumulator]:
    events = EventAccumulator(logdir)
    events.Reload()
    rows = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    return rows, events


def close_to(rows: Rows, expected: Rows, rel: float = 1e-6) -> bool:
    return rows.keys() == expected.keys() and all(
        rows[k] == pytest.approx(v, rel=rel, abs=1e-6) for k, v in expected.items()
    )


@pytest.fixture(scope="module")
def contract_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the contract tests: an MLflow store's tables are made once (seconds)."""
    return tmp_path_factory.mktemp("contract")


class TrackerContract(RunTrackerContract):
    @pytest.fixture(autouse=True)
    def _root(self, contract_root: Path) -> None:
        self.root = contract_root

    def make_tracker(self, tmp_path: Path) -> Any:
        options = {
            "wandb": {"dir": str(tmp_path)},
            "mlflow": {"tracking_uri": f"sqlite:///{self.root}/mlflow.db"},  # one store: fast
            "tensorboard": {"logdir": str(tmp_path)},
        }[self.name]
        table = {"default": "noop", "metrics": {"kind": self.name, **options}}
        return build_adapters(parse_adapters_table(table)).metrics


class TestWandb(TrackerContract):
    name = "wandb"


class TestMlflow(TrackerContract):
    name = "mlflow"


class TestTensorboard(TrackerContract):
    name = "tensorboard"


def test_each_tracker_keeps_the_settings_and_every_row(tmp_path: Path) -> None:
    result = run(CONFIG, adapters_with(tmp_path, trackers(tmp_path)))
    rows = stored(tmp_path)
    expected = last_per_step(rows)
    assert {("train/loss", s) for s in range(1, 9)} | {("eval/nll", s) for s in (0, 4, 8)} <= (
        expected.keys()
    )
    saved = links(tmp_path)
    assert set(saved) == {
        "wandb.run_id",
        "wandb.project",
        "mlflow.run_id",
        "mlflow.experiment_id",
        "tensorboard.logdir",
    }

    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    found = client.get_run(saved["mlflow.run_id"])
    assert found.info.status == "FINISHED" and found.info.run_name == "t"
    assert found.data.tags["galley.run_id"] == "t" and found.data.tags["galley.workflow"] == "sft"
    assert found.data.params["optim.learning_rate"] == "0.02"  # settings by dotted name
    assert found.data.params["max_steps"] == "8"
    mlflow, _ = mlflow_rows(client, saved["mlflow.run_id"])
    assert mlflow == expected

    tensorboard, events = tensorboard_rows(saved["tensorboard.logdir"])
    assert saved["tensorboard.logdir"] == str(tmp_path / "runs" / "t" / "tensorboard")
    assert close_to(tensorboard, expected)  # TensorBoard keeps float32
    start = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = HParamsPluginData.FromString(start).session_start_info
    assert hparams.group_name == "t" and hparams.hparams["optim.learning_rate"].number_value == 0.02
    (config_text,) = events.Tensors("galley/config")
    assert '"learning_rate": 0.02' in config_text.tensor_proto.string_val[0].decode()

    (wandb,) = offline_runs(tmp_path / "runs")
    assert wandb["id"] == saved["wandb.run_id"] and wandb["name"] == "t"
    assert wandb["config"]["optim"]["learning_rate"] == 0.02
    assert wandb["config"]["galley_run_id"] == "t"
    assert {
        (k, row["step"]): v for row in wandb["history"] for k, v in row.items() if k != "step"
    } == expected
    assert [m["step"] for m in result.metrics] == list(range(1, 9))


class InterruptAt:
    """Ctrl-C after the loop's ``at``-th iteration (an observer's turn)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_loop_start(self, loop: str, done: int, total: int) -> None:
        pass

    def on_iteration_end(self, loop: str, counter: int) -> None:
        if counter == self.at:
            raise KeyboardInterrupt

    def on_metrics(self, stream: str, step: int, metrics: Mapping[str, float]) -> None:
        pass


def test_a_resume_continues_the_same_tracker_runs(tmp_path: Path) -> None:
    """Interrupted after step 5 (checkpoint at 3), then resumed in fresh adapters: each
    tracker goes on in its run of the first attempt, and shows each step's final value."""
    with pytest.raises(WorkflowError, match="interrupted"):
        run(CONFIG, adapters_with(tmp_path, trackers(tmp_path)), observers=[InterruptAt(5)])
    first = dict(links(tmp_path))
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    assert client.get_run(first["mlflow.run_id"]).info.status == "KILLED"

    run(attrs.evolve(CONFIG, resume=True), adapters_with(tmp_path, trackers(tmp_path)))
    assert links(tmp_path) == first  # no tracker started a run of its own
    expected = last_per_step(stored(tmp_path))
    assert {s for key, s in expected if key == "train/loss"} == set(range(1, 9))

    found = client.get_run(first["mlflow.run_id"])
    assert found.info.status == "FINISHED"
    assert found.data.tags["galley.resumed_after_step"] == "3"
    assert len(client.search_runs([found.info.experiment_id])) == 1
    mlflow, logged = mlflow_rows(client, first["mlflow.run_id"])
    assert mlflow == expected
    # MLflow keeps each value it was sent, as JSONL does: the steps after the checkpoint
    # that the first attempt recorded were trained (and sent) again.
    train_steps = [r.step for r in stored(tmp_path) if r.stream == "train"]
    assert train_steps[:3] == [1, 2, 3] and len(train_steps) > 8
    assert sorted(s for key, s in logged if key == "train/loss") == sorted(train_steps)

    tensorboard, _ = tensorboard_rows(first["tensorboard.logdir"])
    assert close_to(tensorboard, expected)
    assert len(list(Path(first["tensorboard.logdir"]).glob("events.out.tfevents.*"))) == 2

    attempts = offline_runs(tmp_path / "runs")
    assert [a["id"] for a in attempts] == [first["wandb.run_id"]] * 2  # `wandb sync` joins them
    assert [r["step"] for r in attempts[1]["history"] if "train/loss" in r] == [4, 5, 6, 7, 8]


def test_a_tracker_that_cannot_start_warns_once_and_the_run_keeps_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not installed (W&B), a server that does not answer (MLflow), a folder that cannot be
    made (TensorBoard): each warns once with its reason and drops out; JSONL gets every row."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (tmp_path / "taken").write_text("a file where the event folder should go")
    metrics = [
        {"kind": "jsonl", "url": str(tmp_path / "runs")},
        {"kind": "wandb", "dir": str(tmp_path / "runs")},
        {"kind": "mlflow", "tracking_uri": "http://galley:hunter2-secret@127.0.0.1:9"},
        {"kind": "tensorboard", "logdir": str(tmp_path / "taken")},
    ]
    with structlog.testing.capture_logs() as logs:
        result = run(CONFIG, adapters_with(tmp_path, metrics))
    dropped = {e["tracker"]: e for e in logs if e["event"] == "metrics.tracker_dropped"}
    assert len([e for e in logs if e["event"] == "metrics.tracker_dropped"]) == 3
    assert dropped["wandb"]["reason"] == "wandb is not installed (pip install 'galley[wandb]')"
    assert dropped["mlflow"]["call"] == "open_run" and "127.0.0.1" in dropped["mlflow"]["reason"]
    assert "hunter2" not in json.dumps(logs, default=str)  # the URL's password is redacted
    assert dropped["tensorboard"]["call"] == "open_run"
    assert [r.step for r in stored(tmp_path) if r.stream == "train"] == list(range(1, 9))
    assert result.steps == 8 and links(tmp_path) == {}


def test_a_tracking_server_that_does_not_answer_holds_training_back_no_longer_than_its_bound(
    tmp_path: Path,
) -> None:
    """MLflow's client retries a refused connection for minutes; past ``start_timeout_s`` the
    tracker drops out and training starts (its retries go on in the background, unheeded)."""
    metrics = [
        {"kind": "jsonl", "url": str(tmp_path / "runs")},
        {"kind": "mlflow", "tracking_uri": "http://127.0.0.1:9", "start_timeout_s": 1.0},
    ]
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        result = run(CONFIG, adapters_with(tmp_path, metrics))
    assert time.monotonic() - started < 20
    (dropped,) = [e for e in logs if e["event"] == "metrics.tracker_dropped"]
    assert dropped["tracker"] == "mlflow" and dropped["call"] == "open_run"
    assert dropped["reason"] == "TimeoutError: opening the run took more than 1 s"
    assert result.steps == 8 and len([r for r in stored(tmp_path) if r.stream == "train"]) == 8


class FullDiskAfter(Tracker):
    """A tracker whose store fills up after ``rows`` rows (as a disk or a quota would)."""

    name = "full-disk"
    made: ClassVar[list[FullDiskAfter]] = []

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.room, self.sent, self.ended = rows, [], ""
        FullDiskAfter.made.append(self)

    def _open(self, run: TrackedRun) -> Mapping[str, str]:
        return {"full-disk.run": run.run_id}

    def _send(self, rows: Sequence[MetricRecord]) -> None:
        if len(self.sent) + len(rows) > self.room:
            raise OSError(28, "No space left on device")
        self.sent.extend(rows)

    def _end(self, outcome: RunOutcome) -> None:
        self.ended = outcome


def test_a_tracker_failing_mid_run_drops_out_and_the_others_get_every_row(
    tmp_path: Path,
) -> None:
    metrics = [
        {"kind": "jsonl", "url": str(tmp_path / "runs")},
        {"kind": "tests.test_trackers:FullDiskAfter", "rows": 3},
        {"kind": "tensorboard", "logdir": str(tmp_path / "runs")},
    ]
    with structlog.testing.capture_logs() as logs:
        run(CONFIG, adapters_with(tmp_path, metrics))
    full = FullDiskAfter.made[-1]
    warnings = [e for e in logs if e["event"] == "metrics.tracker_dropped"]
    assert len(warnings) == 1 and warnings[0]["tracker"] == "full-disk"
    assert "No space left on device" in warnings[0]["reason"] and warnings[0]["call"] == "send"
    assert len(full.sent) == 3 and full.ended == ""  # dropped: never told the run ended
    expected = last_per_step(stored(tmp_path))
    tensorboard, _ = tensorboard_rows(str(tmp_path / "runs" / "t" / "tensorboard"))
    assert close_to(tensorboard, expected)
    assert {s for key, s in expected if key == "train/loss"} == set(range(1, 9))


def test_a_tracker_opens_the_run_of_rows_recorded_without_a_workflow(tmp_path: Path) -> None:
    """Code that only records rows (no open_run) still gets a tracker run per galley run."""
    tracker = build_adapters(
        parse_adapters_table(
            {"default": "noop", "metrics": {"kind": "tensorboard", "logdir": str(tmp_path)}}
        )
    ).metrics
    for step in (1, 2):
        tracker.record(MetricRecord("a", "train", step, {"loss": 1.0 / step}))
    tracker.record(MetricRecord("b", "rollouts", 1, {"reward": 0.5}))
    tracker.flush()
    a, _ = tensorboard_rows(str(tmp_path / "a" / "tensorboard"))
    b, _ = tensorboard_rows(str(tmp_path / "b" / "tensorboard"))
    assert a == {("train/loss", 1): 1.0, ("train/loss", 2): 0.5}
    assert b == {("rollouts/reward", 1): 0.5}


CLI = "import sys; from galley.adapters.cli import main; sys.exit(main(sys.argv[1:]))"


def test_the_cli_logs_to_trackers_and_writes_no_credential_anywhere(tmp_path: Path) -> None:
    """One CLI run with W&B, TensorBoard and a tracking server that refuses, its password
    given on the command line (which W&B records) and credentials in the environment: W&B
    gets the rows, the server's failure is one warning, and no secret shows in the output or
    in any file the run wrote (run folder, trackers' files, event log, trace)."""
    env_secret = "local-" + "9c1e" * 10  # no token shape: known only from the environment
    hub_token = "hf_" + "Q7" * 15
    (tmp_path / "job.toml").write_text(
        "[sft]\nmax_steps = 4\nrun_id = 'cli'\n"
        "[adapters]\ndefault = 'noop'\n"
        "[adapters.blobs]\nkind = 'fsspec'\n"
    )
    metrics = (
        "adapters.metrics=['jsonl', 'wandb', 'tensorboard', {kind = 'mlflow', "
        "tracking_uri = 'http://me:hunter2-secret@127.0.0.1:9'}]"
    )
    argv = ["run", "sft", "--config", "job.toml", "--set", metrics, "--log-file", "ev.jsonl"]
    done = subprocess.run(
        [sys.executable, "-c", CLI, *argv, "--trace", "trace.json"],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"},  # this process's
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "WANDB_API_KEY": env_secret,
            "HF_TOKEN": hub_token,
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout + done.stderr
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    secrets = ("hunter2", env_secret, hub_token)
    assert not any(s in printed + json.dumps(events) for s in secrets)
    dropped = [e for e in events if e["event"] == "metrics.tracker_dropped"]
    assert [e["tracker"] for e in dropped] == ["mlflow"] and "[redacted]" in dropped[0]["reason"]
    assert printed.count("metrics.tracker_dropped") == 1
    (wandb,) = offline_runs(tmp_path / "runs")
    assert [r["step"] for r in wandb["history"] if "train/loss" in r] == [1, 2, 3, 4]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "job.toml"]
    assert len(written) > 10 and (tmp_path / "trace.json").is_file()
    leaks = [
        f"{p.relative_to(tmp_path)}: {s}"
        for p in written
        for s in secrets
        if s.encode() in p.read_bytes()
    ]
    assert leaks == []
    assert any(b"[redacted]" in p.read_bytes() for p in written if "wandb" in str(p))


def test_credentials_in_the_environment_are_redacted_wherever_they_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from galley.adapters.cli.logging import configure_logging

    key = "local-" + "7f3a" * 10  # no token shape of its own: known only from the environment
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_MODE", "offline")  # short: not a credential's value
    log = tmp_path / "events.jsonl"
    close = configure_logging("error", log)
    try:
        structlog.get_logger("galley").info("tracker.failed", reason=f"login refused for {key}")
    finally:
        close()
    assert key not in log.read_text() and "[redacted]" in log.read_text()
    assert redact_text("mode offline") == "mode offline"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: (
            st.dictionaries(st.text("abc", min_size=1, max_size=3), inner, max_size=4)
            | st.lists(inner, max_size=3)
        ),
        max_leaves=12,
    ).filter(lambda v: isinstance(v, dict))
)
def test_hyperparameters_keep_every_leaf_as_a_scalar(config: dict[str, Any]) -> None:
    flat = hyperparameters(config)
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())

    def leaves(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                out.update(leaves(v, f"{prefix}{k}."))
            return out
        return {} if value is None else {prefix[:-1]: value}

    expected = leaves(config, "")
    assert flat.keys() <= expected.keys()
    for name, value in expected.items():
        if isinstance(value, list) or (isinstance(value, float) and abs(value) == float("inf")):
            assert json.loads(str(flat[name])) == value
        else:
            assert flat[name] == value


def test_metric_keys_name_the_stream_once() -> None:
    assert metric_key("train", "loss") == "train/loss"
    assert metric_key("eval", "eval/nll") == "eval/nll"
    assert metric_key("eval", "train/loss") == "eval/train/loss"


def test_the_cli_puts_trackers_beside_the_run_unless_told() -> None:
    from galley.adapters.cli.run_config import metrics_beside_the_run

    metrics = ["jsonl", "wandb", "mlflow", {"kind": "tensorboard", "logdir": "/elsewhere"}]
    choices = parse_adapters_table(
        {"blobs": {"kind": "fsspec", "url": "/data"}, "metrics": metrics}
    )
    placed = {
        p.kind: dict(p.options) for p in metrics_beside_the_run(choices, "exp1")["metrics"].parts
    }
    assert placed == {
        "jsonl": {"url": "/data/exp1"},
        "wandb": {"dir": "/data/exp1"},
        "mlflow": {"tracking_uri": "sqlite:////data/exp1/mlflow.db"},
        "tensorboard": {"logdir": "/elsewhere"},  # told: left alone
    }
    on_s3 = parse_adapters_table(
        {"blobs": {"kind": "fsspec", "url": "s3://b/p"}, "metrics": metrics}
    )
    placed = {
        p.kind: dict(p.options) for p in metrics_beside_the_run(on_s3, "exp1")["metrics"].parts
    }
    assert placed["wandb"] == {} and placed["mlflow"] == {}  # local files only: their defaults
