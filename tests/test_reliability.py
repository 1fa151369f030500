"""Reliability promises: non-finite values stop a run cleanly, secrets never reach the logs,
runs sharing a blob root don't disturb each other, corrupt checkpoints are named."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog

from galley.adapters.cli.logging import configure_logging, redact_secrets
from galley.adapters.fsspec.blobs import FsspecBlobStore
from galley.adapters.noop import NoopTrainingClient, noop_adapters
from galley.core import ForwardBackwardOutput, PortTimeoutError, SessionConfig, WorkflowError
from galley.core.errors import NonFiniteError
from galley.core.runs.layout import RunPaths
from galley.core.runs.manifest import CorruptCheckpointError, read_checkpoint
from galley.core.stages import read_index
from galley.workflows.sft import SFTConfig, run


class NthForwardBackward(NoopTrainingClient):
    """A backend whose ``at``-th forward_backward returns ``nth(future)`` instead."""

    def __init__(self, *args: Any, at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at = at

    def nth(self, future: Future[ForwardBackwardOutput]) -> Future[ForwardBackwardOutput]:
        raise NotImplementedError

    def start_session(self, config: SessionConfig) -> Any:
        session = super().start_session(config)
        original, calls = session.forward_backward, []

        def forward_backward(*args: Any, **kwargs: Any) -> Future[ForwardBackwardOutput]:
            calls.append(1)
            future = original(*args, **kwargs)
            return self.nth(future) if len(calls) == self.at else future

        session.forward_backward = forward_backward  # type: ignore[method-assign]
        return session


class NaNAtCall(NthForwardBackward):
    """The loss turns NaN at the n-th forward_backward (a diverging run)."""

    def nth(self, future: Future[ForwardBackwardOutput]) -> Future[ForwardBackwardOutput]:
        out = future.result()
        poisoned: Future[ForwardBackwardOutput] = Future()
        poisoned.set_result(
            ForwardBackwardOutput(out.loss_fn_outputs, {**out.metrics, "loss:sum": float("nan")})
        )
        return poisoned


def test_a_nan_loss_stops_the_run_naming_step_and_batch(tmp_path: Path) -> None:
    blobs = FsspecBlobStore(str(tmp_path))
    adapters = noop_adapters(blobs=blobs, training=NaNAtCall(blobs, at=13))
    with pytest.raises(WorkflowError) as info:
        run(SFTConfig(max_steps=30, checkpoint_every=5, run_id="nan", batch_size=4), adapters)
    cause = info.value.__cause__
    assert isinstance(cause, NonFiniteError) and cause.step == 13 and len(cause.examples) == 4
    assert "step 13: loss is nan (batch of examples" in str(cause)
    # The last good checkpoint (step 10) is intact; nothing was saved from the NaN weights.
    index = read_index(blobs, RunPaths("runs", "nan"))
    assert [r.step for r in index] == [5, 10]
    read_checkpoint(blobs, index[-1].state)  # verifies every blob


def test_a_nan_step_can_be_skipped_instead(tmp_path: Path) -> None:
    blobs = FsspecBlobStore(str(tmp_path))
    config = SFTConfig(
        max_steps=20, checkpoint_every=5, run_id="skip", on_nonfinite="skip", num_samples=0
    )
    result = run(config, noop_adapters(blobs=blobs, training=NaNAtCall(blobs, at=7)))
    skipped = [m["step"] for m in result.metrics if m.get("skipped")]
    assert skipped == [7] and len(result.metrics) == 20
    assert all(m["loss"] == m["loss"] for m in result.metrics if "loss" in m)  # no NaN recorded
    assert [c.step for c in result.checkpoints] == [5, 10, 15, 20]


def test_jax_optim_step_with_a_nan_gradient_changes_nothing(tmp_path: Path) -> None:
    import jax
    import numpy as np

    from galley.adapters.jax import JaxTrainingClient
    from galley.adapters.noop import NoopBlobStore, NoopHubClient
    from galley.core import AdamParams, Datum, LoraConfig
    from tests.hf_models import make_model

    folder = make_model(tmp_path / "m", "llama")
    session = JaxTrainingClient(NoopHubClient(), NoopBlobStore()).start_session(
        SessionConfig(str(folder), LoraConfig(rank=2))
    )
    data = [Datum.from_tokens([0, 5, 6, 7], [0, 1, 1, 1])]
    session.forward_backward(data)
    session.optim_step(AdamParams(learning_rate=0.05)).result()
    before = [np.asarray(x) for x in jax.tree.leaves((session._trainable, session._opt_state))]
    session._grads = jax.tree.map(lambda g: g * float("nan"), session._grads)
    result = session.optim_step(AdamParams(learning_rate=0.05)).result()
    after = [np.asarray(x) for x in jax.tree.leaves((session._trainable, session._opt_state))]
    assert result.grad_norm != result.grad_norm and result.update_norm == 0.0
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_secrets_are_redacted_from_events(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    close = configure_logging("error", log)
    try:
        structlog.get_logger("galley").info(
            "hub.connect",
            api_key="sk-abcdefghijklmnopqrstuvwxyz",
            options={"hf_token": "hf_" + "x" * 30},
            header="Authorization: Bearer abc.def",
            note="uses hf_" + "y" * 24,
            tokens=512,
        )
    finally:
        close()
    text = log.read_text()
    assert (
        "sk-abc" not in text
        and "hf_xxx" not in text
        and "hf_yyy" not in text
        and "abc.def" not in text
    )
    event = json.loads(text.splitlines()[-1])
    assert event["api_key"] == "[redacted]" and event["options"]["hf_token"] == "[redacted]"
    assert event["tokens"] == 512  # a count named like a secret's cousin survives
    assert redact_secrets(None, "info", {"password": "p"}) == {"password": "[redacted]"}


def test_two_runs_sharing_a_blob_root_do_not_disturb_each_other(tmp_path: Path) -> None:
    results: dict[str, Any] = {}

    def go(run_id: str, lr: float) -> None:
        blobs = FsspecBlobStore(str(tmp_path))
        adapters = noop_adapters(blobs=blobs, training=NoopTrainingClient(blobs))
        results[run_id] = run(
            SFTConfig(
                max_steps=20, checkpoint_every=4, learning_rate=lr, run_id=run_id, num_samples=2
            ),
            adapters,
        )

    threads = [
        threading.Thread(target=go, args=(name, lr)) for name, lr in (("a", 1e-3), ("b", 3e-3))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blobs = FsspecBlobStore(str(tmp_path))
    for name in ("a", "b"):
        index = read_index(blobs, RunPaths("runs", name))
        assert [r.step for r in index] == [4, 8, 12, 16, 20]
        for record in index:
            read_checkpoint(blobs, record.state)
        alone = run(
            SFTConfig(
                max_steps=20,
                checkpoint_every=4,
                learning_rate={"a": 1e-3, "b": 3e-3}[name],
                run_id=name,
                num_samples=2,
            ),
            noop_adapters(),
        )
        assert [m["loss"] for m in results[name].metrics] == [m["loss"] for m in alone.metrics]


def test_a_corrupt_blob_is_named(tmp_path: Path) -> None:
    blobs = FsspecBlobStore(str(tmp_path))
    session = NoopTrainingClient(blobs).start_session(SessionConfig("m", storage_prefix="s"))
    ref = session.save_state("x").result()
    path = tmp_path / "s" / "state" / "x" / "state.json"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(
        CorruptCheckpointError, match=r"'s/state/x/state.json' is corrupt: expected \d+ bytes"
    ):
        session.load_state(ref).result()
    (tmp_path / "s" / "state" / "x" / "state.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="'s/state/x/state.json' is missing"):
        session.load_state(ref).result()


class HangsAtStep(NthForwardBackward):
    """The n-th forward_backward never answers."""

    def nth(self, future: Future[ForwardBackwardOutput]) -> Future[ForwardBackwardOutput]:
        return Future()


def test_a_call_that_never_answers_stops_the_run_naming_it(tmp_path: Path) -> None:
    blobs = FsspecBlobStore(str(tmp_path))
    adapters = noop_adapters(blobs=blobs, training=HangsAtStep(blobs, at=4))
    config = SFTConfig(max_steps=8, checkpoint_every=2, num_samples=0, run_id="hang")
    with pytest.raises(WorkflowError) as info:
        run(attrs.evolve(config, call_timeout_s=0.2), adapters)
    assert isinstance(info.value.__cause__, PortTimeoutError)
    assert "training.forward_backward (step 4) did not finish within 0.2 s" in str(info.value)
    assert info.value.stage in {"collect_results", "drain", "checkpoint"}
    assert [r.step for r in read_index(blobs, RunPaths("runs", "hang"))] == [
        2
    ]  # resumable from step 2


def test_a_metrics_store_that_cannot_flush_stops_the_run_as_a_workflow_error() -> None:
    from galley.adapters.noop import NoopMetricsStore

    class FullDisk(NoopMetricsStore):
        def flush(self) -> None:
            raise OSError(28, "No space left on device")

    with pytest.raises(WorkflowError, match="No space left on device") as info:
        run(SFTConfig(max_steps=2, num_samples=0, run_id="f"), noop_adapters(metrics=FullDisk()))
    assert isinstance(info.value.__cause__, OSError)
