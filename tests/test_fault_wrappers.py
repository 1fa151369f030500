"""Transient faults on every port are survived by composable retry wrappers; when retries run
out the run stops with a clear error and a state it resumes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from galley.adapters.composition import AdapterChoice, build_adapters
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.fsspec.metrics import JsonlMetricsStore
from galley.adapters.jax import JaxTrainingClient
from galley.adapters.noop import NoopBlobStore, NoopTrainingClient, noop_adapters
from galley.adapters.wrappers.resilience import FaultyAdapter, with_retries
from galley.core import Datum, SessionConfig, TransientError, WorkflowError
from galley.core.engine import NO_RETRY, RetryPolicy
from galley.core.runs.layout import RunPaths
from galley.core.stages import read_index
from galley.workflows.sft import SFTConfig, run
from tests.hf_models import make_model

CONFIG = SFTConfig(max_steps=25, checkpoint_every=5, eval_every=5, num_samples=4, run_id="f")


def without_timing(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def choices(root: Path, faulty: bool, models: Path) -> dict[str, AdapterChoice]:
    options = {
        "blobs": {"url": str(root)},
        "metrics": {"url": str(root / "metrics")},
        "hub": {"root": str(models)},
    }
    kinds = {
        "training": "noop",
        "datasets": "noop",
        "blobs": "fsspec",
        "hub": "local",
        "metrics": "jsonl",
        "completer": "noop",
    }
    out = {}
    for i, (port, kind) in enumerate(kinds.items()):
        rate = {"completer": 0.7, "hub": 0.5}.get(port, 0.2)
        faults = {"failure_rate": rate, "seed": i} | (
            {"mid_write_failure_rate": 0.2} if port == "blobs" else {}
        )
        out[port] = AdapterChoice(
            kind,
            options.get(port, {}),
            retry={"max_attempts": 12, "initial_backoff_s": 0.0} if faulty else None,
            faults=faults if faulty else None,
        )
    return out


def forward_through(hub: Any) -> list[float]:
    """The log-probabilities a JAX session gives after reading its model through ``hub``
    (config, tokenizer and weights: the hub's consumer in a real run)."""
    session = JaxTrainingClient(hub, NoopBlobStore()).start_session(SessionConfig("org/tiny"))
    data = [Datum.from_tokens([0, 4, 9, 12], [0, 1, 1, 1])]
    return [float(x) for x in session.forward(data).result().logprobs[0]]


def test_faults_on_every_port_are_survived_with_the_same_result(tmp_path: Path) -> None:
    """All six ports fail now and then; retries give the clean run's metrics, checkpoints and
    blobs, and the model read through the faulty hub gives the clean hub's log-probabilities."""
    models = tmp_path / "models"
    make_model(models / "org" / "tiny", "llama")
    clean_adapters = build_adapters(choices(tmp_path / "clean", False, models))
    clean = run(CONFIG, clean_adapters)
    adapters = build_adapters(choices(tmp_path / "faulty", True, models))
    result = run(CONFIG, adapters, retry=NO_RETRY)  # the adapter wrappers alone do the retrying
    assert forward_through(adapters.hub) == forward_through(clean_adapters.hub)
    injected = {
        port: getattr(adapters, port)._inner.injected  # RetryingAdapter(FaultyAdapter(...))
        for port in ("training", "datasets", "blobs", "hub", "metrics", "completer")
    }
    assert sum(injected.values()) >= 20 and all(n > 0 for n in injected.values()), injected
    assert without_timing(result.metrics) == without_timing(clean.metrics)
    assert result.eval == clean.eval
    assert [c.step for c in result.checkpoints] == [5, 10, 15, 20, 25]
    faulty_blobs = FsspecBlobStore(str(tmp_path / "faulty"))
    clean_blobs = FsspecBlobStore(str(tmp_path / "clean"))
    key = "runs/f/state/step-000025/state.json"
    assert faulty_blobs.read(key) == clean_blobs.read(key)  # no torn write survived


class StoreDownAtStep15(FsspecBlobStore):
    def write(self, key: str, data: bytes) -> None:
        if "step-000015" in key:
            raise TransientError(f"connection reset writing {key}")
        super().write(key, data)


def test_exhausted_retries_stop_cleanly_and_the_run_resumes(tmp_path: Path) -> None:
    reference = run(CONFIG, noop_adapters())

    def adapters(store: FsspecBlobStore) -> Any:
        blobs = with_retries(store, RetryPolicy(max_attempts=3, initial_backoff_s=0.0), "blobs")
        return noop_adapters(
            blobs=blobs,
            training=NoopTrainingClient(blobs),
            metrics=JsonlMetricsStore(str(tmp_path / "m")),
        )

    with pytest.raises(
        WorkflowError,
        match="stage 'checkpoint' failed at step 15: TransientError: connection reset",
    ) as info:
        run(
            CONFIG,
            adapters(StoreDownAtStep15(str(tmp_path))),
            retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.0),
        )
    assert info.value.step == 15
    assert [r.step for r in read_index(FsspecBlobStore(str(tmp_path)), RunPaths("runs", "f"))] == [
        5,
        10,
    ]
    resumed = run(attrs_evolve(CONFIG, resume=True), adapters(FsspecBlobStore(str(tmp_path))))
    assert without_timing(resumed.metrics) == without_timing(reference.metrics)
    assert resumed.eval == reference.eval


def attrs_evolve(config: SFTConfig, **changes: Any) -> SFTConfig:
    import attrs

    return attrs.evolve(config, **changes)


def test_a_torn_index_write_keeps_the_earlier_entries(tmp_path: Path) -> None:
    blobs = FsspecBlobStore(str(tmp_path))
    run(
        SFTConfig(max_steps=10, checkpoint_every=5, num_samples=0, run_id="t"),
        noop_adapters(blobs=blobs, training=NoopTrainingClient(blobs)),
    )
    key = "runs/t/checkpoints.jsonl"
    data = blobs.read(key)
    blobs.write(key, data[: len(data) * 3 // 4])  # the second line cut short
    assert [r.step for r in read_index(blobs, RunPaths("runs", "t"))] == [5]


def test_faulty_adapter_is_seeded() -> None:
    from galley.adapters.noop import Faults, NoopMetricsStore
    from galley.core import MetricRecord

    def failures(seed: int) -> list[int]:
        store = FaultyAdapter(NoopMetricsStore(), Faults(0.5, seed=seed), "metrics")
        out = []
        for i in range(40):
            try:
                store.record(MetricRecord("r", "train", i, {"x": 1.0}))
            except TransientError:
                out.append(i)
        return out

    assert failures(1) == failures(1) != failures(2)
