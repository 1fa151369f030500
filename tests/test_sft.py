"""SFT end to end on the noop adapters, through the Python API."""

from __future__ import annotations

import itertools
import json

import pytest

from galley.adapters.noop import Faults, NoopDatasetStore, noop_adapters
from galley.adapters.settings import settings_from_mapping
from galley.core import Adapters, ConfigError, MetricRecord, WorkflowError
from galley.core.engine import RetryPolicy
from galley.core.runs.layout import RunPaths
from galley.core.runs.records import DataSplit
from galley.core.stages import read_index
from galley.core.stages.data import holdout_size
from galley.workflows.sft import SFTConfig, build_workflow, run, summarize


def test_default_config_is_valid_and_names_the_embedded_defaults() -> None:
    config = SFTConfig(max_steps=30)
    assert config.base_model and config.dataset and config.max_steps == 30


def test_sft_trains_evaluates_checkpoints_and_exports(adapters: Adapters) -> None:
    result = run(SFTConfig(max_steps=30, run_id="r1", eval_every=10, checkpoint_every=10), adapters)
    assert result.run_id == "r1" and result.steps == 30
    assert [m["step"] for m in result.metrics] == list(range(1, 31))
    assert all({"loss", "lr", "grad_norm", "tokens"} <= set(m) for m in result.metrics)
    assert result.metrics[-1]["loss"] < 0.8 * result.metrics[0]["loss"]
    lrs = [m["lr"] for m in result.metrics]
    assert lrs[0] == pytest.approx(3e-3) and all(
        b < a for a, b in itertools.pairwise(lrs)
    )  # linear decay
    assert [e["step"] for e in result.eval] == [0, 10, 20, 30]
    nll = [e["eval/nll"] for e in result.eval]
    assert all(b < a for a, b in itertools.pairwise(nll))
    assert "eval/exact_match" in result.eval[-1]
    # Checkpoints: every 10 steps, indexed with the data position training continues from.
    assert [c.step for c in result.checkpoints] == [10, 20, 30]
    index = read_index(adapters.blobs, RunPaths("runs", "r1"))
    assert index == list(result.checkpoints)
    assert index[1].next_position.step == 20 and index[1].state.key == "runs/r1/state/step-000020"
    assert adapters.blobs.exists("runs/r1/state/step-000020/manifest.json")
    assert result.sampler is not None and adapters.blobs.exists(
        f"{result.sampler.key}/manifest.json"
    )
    assert len(result.samples) == 16
    # Every step's metrics went through the MetricsStore port.
    rows = adapters.metrics.read("r1")
    assert [r.step for r in rows if "loss" in r.metrics] == list(range(1, 31))


def test_runs_are_deterministic_and_learning_rate_matters() -> None:
    def final_loss(lr: float) -> float:
        return run(
            SFTConfig(max_steps=20, run_id="d", learning_rate=lr, num_samples=0), noop_adapters()
        ).metrics[-1]["loss"]

    assert final_loss(3e-4) == final_loss(3e-4)
    assert final_loss(1e-3) < final_loss(3e-4) < final_loss(1e-5)


def test_epochs_and_held_out_split() -> None:
    rows = [{"prompt": f"q{i}", "completion": f"answer {i}"} for i in range(20)]
    adapters = noop_adapters(datasets=NoopDatasetStore({"mine": {"train": rows}}))
    result = run(
        SFTConfig(dataset="mine", eval_holdout=4, batch_size=4, num_epochs=3, run_id="e"), adapters
    )
    # eval_holdout 4, but at most a tenth of 20 rows: 2 held out, 18 trained on in 5 batches
    assert (result.data.train_rows, result.data.eval_rows, result.data.held_out) == (18, 2, True)
    assert result.steps == 15  # 5 batches of up to 4 rows, 3 epochs
    assert result.eval[0]["eval/tokens"] > 0


@pytest.mark.parametrize(
    ("rows", "eval_holdout", "held"), [(40, 32, 4), (9, 32, 0), (10, 32, 1), (1000, 32, 32)]
)
def test_a_small_file_keeps_most_of_its_rows_for_training(
    rows: int, eval_holdout: int, held: int
) -> None:
    assert holdout_size(rows, eval_holdout) == held
    data = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(rows)]
    adapters = noop_adapters(datasets=NoopDatasetStore({"mine": {"train": data}}))
    config = SFTConfig(
        dataset="mine", eval_holdout=eval_holdout, batch_size=1, max_steps=1, num_samples=0
    )
    result = run(config, adapters)
    assert result.data == DataSplit("mine", rows - held, held, "test", True)
    header = summarize(result).header
    assert header == (f"data: train {rows - held} rows, held out {held} (eval_holdout)",)


class ListMetrics:
    """A user's own MetricsStore: a plain class, not derived from anything in galley."""

    def __init__(self) -> None:
        self.rows: list[MetricRecord] = []
        self.flushed = 0

    def record(self, record: MetricRecord) -> None:
        self.rows.append(record)

    def flush(self) -> None:
        self.flushed += 1

    def read(self, run_id: str) -> list[MetricRecord]:
        return [r for r in self.rows if r.run_id == run_id]


def test_a_user_defined_adapter_fills_a_port() -> None:
    mine = ListMetrics()
    result = run(SFTConfig(max_steps=5, run_id="u"), noop_adapters(metrics=mine))
    assert [r.step for r in mine.rows if r.stream == "train"] == [1, 2, 3, 4, 5]
    assert [r.stream for r in mine.rows if r.step == 0] == ["eval"]
    assert mine.flushed == 2  # before the final checkpoint's index entry, and at the end
    assert [r.metrics["loss"] for r in mine.rows if r.stream == "train"] == [
        m["loss"] for m in result.metrics
    ]


def test_an_object_missing_port_methods_is_refused() -> None:
    class Half:
        def record(self, record: MetricRecord) -> None: ...

    with pytest.raises(
        ValueError,
        match="Adapters.metrics: Half does not implement the MetricsSink port: missing flush",
    ):
        noop_adapters(metrics=Half())


def without_timing(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def test_transient_faults_are_survived_with_the_same_result() -> None:
    config = SFTConfig(max_steps=25, run_id="f", checkpoint_every=5, eval_every=5)
    clean = run(config, noop_adapters())
    faulty = noop_adapters(faults=Faults(failure_rate=0.15, seed=3))
    result = run(config, faulty, retry=RetryPolicy(max_attempts=8, initial_backoff_s=0))
    assert faulty.training.faults.injected > 5  # type: ignore[attr-defined]
    assert without_timing(result.metrics) == without_timing(clean.metrics)
    assert result.eval == clean.eval


def test_a_permanent_failure_stops_cleanly_with_state() -> None:
    adapters = noop_adapters(datasets=NoopDatasetStore(faults=Faults(failure_rate=1.0)))
    with pytest.raises(WorkflowError, match="load_dataset") as info:
        run(
            SFTConfig(max_steps=5, run_id="x"),
            adapters,
            retry=RetryPolicy(max_attempts=2, initial_backoff_s=0),
        )
    assert info.value.stage == "load_dataset" and info.value.state["run_id"] == "x"


def test_workflow_declares_its_stages_and_ports() -> None:
    workflow = build_workflow(SFTConfig())
    names = [s.name for s in workflow.stages()]
    assert names[:6] == [
        "load_dataset",
        "check_split",
        "start_session",
        "check_sampling",
        "render_dataset",
        "plan_training",
    ]
    assert {"forward_backward", "optim_step", "checkpoint", "evaluate", "sample_answers"} <= set(
        names
    )
    assert workflow.ports == {"training", "datasets", "blobs", "metrics", "completer"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_stepz": 3}, "unknown key.*max_stepz; valid keys: base_model"),
        ({"batch_size": 0}, "batch_size: must be >= 1"),
        (
            {"train_on": "everything"},
            "unknown value 'everything'; expected one of all_assistant_messages",
        ),
        ({"lr_schedule": "exp"}, "lr_schedule"),
        ({"output": "../up"}, "output"),
        ({"run_id": "a/b"}, "run_id"),
    ],
)
def test_bad_config_is_refused_naming_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(SFTConfig, data, "sft config")


def test_run_result_metrics_are_json_safe(adapters: Adapters) -> None:
    result = run(SFTConfig(max_steps=3, run_id="j"), adapters)
    rows = result.metrics + result.eval
    assert len(rows) >= 3 and json.loads(json.dumps(rows)) == rows
