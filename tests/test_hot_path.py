"""The per-step request path: the immediate queue, batch-wide vocabulary checks, and the
noop session's batched arithmetic against a per-datum computation."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galley.adapters.helpers.request_queue import Deferred, ImmediateQueue, RequestQueue
from galley.adapters.jax.batching import pad_batch
from galley.adapters.noop import NoopBlobStore, NoopTrainingClient
from galley.adapters.noop.training import difficulty
from galley.core import (
    Datum,
    ForwardBackwardOutput,
    ModelInput,
    SessionConfig,
    TensorData,
)
from galley.core.domain.batching import BatchPlan
from galley.core.domain.losses import LossFn, reference_loss
from galley.core.domain.types import ForwardBackwardInput
from galley.core.errors import GalleyError, ValidationError
from galley.core.stages.train import normalised_batch


def test_immediate_queue_resolves_in_order_and_delivers_failures_through_the_future() -> None:
    queue = ImmediateQueue("q")
    seen: list[int] = []
    first = queue.submit(lambda: seen.append(1) or 1)
    failed = queue.submit(lambda: 1 // 0)
    assert first.done() and first.result() == 1
    assert seen == [1]
    with pytest.raises(ZeroDivisionError):
        failed.result()
    queue.close()
    with pytest.raises(GalleyError, match="q is closed"):
        queue.submit(lambda: 2)


def test_immediate_queue_runs_one_request_at_a_time_across_threads() -> None:
    queue, active, overlaps = ImmediateQueue("q"), [0], [0]

    def work() -> None:
        active[0] += 1
        overlaps[0] = max(overlaps[0], active[0])
        sum(range(2000))
        active[0] -= 1

    threads = [
        threading.Thread(target=lambda: [queue.submit(work) for _ in range(200)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 1


def test_request_queue_dispatches_queued_work_before_finishing_deferred_results() -> None:
    """The device goes from one request to the next without waiting for host copies, and
    futures still resolve in submission order with each its own result or error."""
    queue, log, gate = RequestQueue("q"), [], threading.Event()

    def deferred(name: str, fail_on_finish: bool = False) -> Deferred[str]:
        log.append(f"dispatch {name}")

        def finish() -> str:
            log.append(f"finish {name}")
            if fail_on_finish:
                raise ValueError(name)
            return name

        return Deferred(finish)

    blocker = queue.submit(gate.wait)  # holds the worker until everything below is queued
    a = queue.submit(lambda: deferred("a"))
    b = queue.submit(lambda: deferred("b", fail_on_finish=True))
    c = queue.submit(lambda: log.append("plain c") or "c")
    d = queue.submit(lambda: deferred("d"))
    gate.set()
    assert blocker.result() is True
    assert a.result() == "a" and c.result() == "c" and d.result() == "d"
    with pytest.raises(ValueError, match="b"):
        b.result()
    # c runs while a and b are in flight; its result is set once they have finished
    assert log == [
        "dispatch a",
        "dispatch b",
        "plain c",
        "finish a",
        "finish b",
        "dispatch d",
        "finish d",
    ]
    queue.close()
    with pytest.raises(GalleyError, match="q is closed"):
        queue.submit(lambda: 1)


def test_request_queue_close_finishes_what_is_in_flight() -> None:
    queue = RequestQueue("q")
    futures = [queue.submit(lambda i=i: Deferred(lambda: i * i)) for i in range(10)]
    queue.close()
    assert [f.result(timeout=0) for f in futures] == [i * i for i in range(10)]


def _datum(inputs: list[int], targets: list[int]) -> Datum:
    return Datum(
        ModelInput.from_ints(inputs),
        {"target_tokens": TensorData(np.asarray(targets, dtype=np.int64))},
    )


@pytest.mark.parametrize(
    ("data", "where", "token"),
    [
        ([_datum([1, 2], [2, 3]), _datum([4, 300], [5, 6])], r"data\[1\]\.model_input\[1\]", 300),
        ([_datum([1, 2], [2, 3]), _datum([4, 5], [5, 256])], r"data\[1\]\.target_tokens\[1\]", 256),
        ([_datum([1, 2], [-7, 3])], r"data\[0\]\.target_tokens\[0\]", -7),
    ],
)
def test_vocabulary_check_names_the_datum_and_position(
    data: list[Datum], where: str, token: int
) -> None:
    request = ForwardBackwardInput(data)
    with pytest.raises(ValidationError, match=rf"{where}: token id {token} is outside"):
        request.check_vocabulary(256)
    ForwardBackwardInput([_datum([1, 255], [255, 0])]).check_vocabulary(256)  # in range: passes


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 260), min_size=1, max_size=6),
        min_size=1,
        max_size=4,
    )
)
def test_vocabulary_check_refuses_exactly_the_out_of_range_ids(targets: list[list[int]]) -> None:
    # The batch-wide check reads ids as unsigned: a negative id must still be refused.
    request = ForwardBackwardInput([_datum([1] * len(t), t) for t in targets])
    bad = [(i, j) for i, t in enumerate(targets) for j, x in enumerate(t) if not 0 <= x < 256]
    if not bad:
        request.check_vocabulary(256)
        return
    i, j = bad[0]
    with pytest.raises(ValidationError, match=rf"data\[{i}\]\.target_tokens\[{j}\]"):
        request.check_vocabulary(256)


def test_epoch_order_is_cached_and_read_only() -> None:
    plan = BatchPlan(50, 8, seed=3)
    order = plan.epoch_order(2)
    assert order is plan.epoch_order(2)
    assert not order.flags.writeable
    assert sorted(order.tolist()) == list(range(50))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.integers(0, 255), min_size=2, max_size=20),
            st.floats(0.0, 2.0, allow_nan=False),
        ),
        min_size=1,
        max_size=6,
    ),
    theta=st.floats(-0.05, 0.05),
)
def test_noop_batch_matches_per_datum_arithmetic(
    rows: list[tuple[list[int], float]], theta: float
) -> None:
    """The batched fake equals the model written one datum at a time (its definition)."""
    client = NoopTrainingClient(NoopBlobStore())
    session = client.start_session(SessionConfig("m"))
    session._params.theta = theta
    data = [Datum.from_tokens(tokens, [w] * len(tokens)) for tokens, w in rows]
    out = session.forward_backward(data).result()
    k, floor = client.sensitivity, client.floor
    scale = floor + (1 - floor) * math.exp(-k * theta)
    total_loss, grad = 0.0, 0.0
    for datum, logprobs in zip(data, out.logprobs, strict=True):
        targets = datum.loss_fn_inputs["target_tokens"].data
        c = difficulty(datum.model_input.to_ints(), targets, session.tokenizer.vocab_size)
        logp = -c * scale
        inputs = {"weights": datum.loss_fn_inputs["weights"].data}
        loss, dloss = reference_loss(LossFn.CROSS_ENTROPY, logp, inputs)
        total_loss += loss
        grad += float((dloss * c * (1 - floor) * k * math.exp(-k * theta)).sum())
        np.testing.assert_allclose(logprobs, logp.astype(np.float32), rtol=1e-6)
    assert out.loss == pytest.approx(total_loss, rel=1e-9, abs=1e-12)
    assert session.parameters()["grad"] == pytest.approx(grad, rel=1e-9, abs=1e-12)
    session.close()


@given(chunks=st.lists(st.lists(st.integers(0, 2**40), max_size=12), max_size=4))
def test_token_array_is_the_read_only_cached_token_sequence(chunks: list[list[int]]) -> None:
    model_input = ModelInput.empty()
    for tokens in chunks:
        model_input = model_input.append_ints(tokens)
    array = model_input.token_array
    assert array.tolist() == model_input.to_ints()
    assert array.dtype == np.int64 and not array.flags.writeable
    assert model_input.token_array is array
    twin = ModelInput(model_input.chunks)  # its cache never filled: equality ignores it
    assert twin == model_input and hash(twin) == hash(model_input)


def test_request_queue_finishes_unclosed_work_at_interpreter_exit(tmp_path: Path) -> None:
    """A save submitted and never awaited still lands when the script ends without close()."""
    marker = tmp_path / "saved.txt"
    script = (
        "import time\n"
        "from galley.adapters.helpers.request_queue import Deferred, RequestQueue\n"
        "q = RequestQueue('exit-test')\n"
        "q.submit(lambda: time.sleep(0.3))\n"
        f"q.submit(lambda: Deferred(lambda: open({str(marker)!r}, 'w').write('ok')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert done.returncode == 0
    assert marker.read_text() == "ok"


def test_request_queue_may_be_closed_from_its_own_callbacks() -> None:
    queue, gate, closed = RequestQueue("q"), threading.Event(), threading.Event()
    queue.submit(gate.wait)
    future = queue.submit(lambda: threading.current_thread().name)
    future.add_done_callback(lambda _: (queue.close(), closed.set()))  # runs on the worker
    gate.set()
    assert closed.wait(10) and future.result() == "q"
    with pytest.raises(GalleyError):
        queue.submit(lambda: 2)


batch_weights = st.lists(
    st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=2, max_size=12),
    min_size=1,
    max_size=6,
)


@settings(max_examples=50, deadline=None)
@given(batch_weights, st.data())
def test_request_columns_are_its_datums_end_to_end(
    rows: list[list[float]], data: st.DataObject
) -> None:
    datums = [
        Datum.from_tokens([(7 * i + j) % 50 for j in range(len(w))], w) for i, w in enumerate(rows)
    ]
    if data.draw(st.booleans()):  # a datum without weights weighs 1 in the filled column
        datums[0] = Datum(
            datums[0].model_input, {"target_tokens": datums[0].loss_fn_inputs["target_tokens"]}
        )
    request = ForwardBackwardInput(datums)
    assert request.lengths == tuple(d.model_input.length for d in datums)
    assert request.num_tokens == sum(request.lengths)
    np.testing.assert_array_equal(
        request.tokens(), np.concatenate([d.model_input.token_array for d in datums])
    )
    targets = np.concatenate([d.loss_fn_inputs["target_tokens"].data for d in datums])
    np.testing.assert_array_equal(request.column("target_tokens"), targets)
    filled = request.column("weights", fill=1.0)
    start = 0
    for d in datums:
        end = start + d.model_input.length
        expected = d.loss_fn_inputs["weights"].data if "weights" in d.loss_fn_inputs else 1.0
        np.testing.assert_array_equal(filled[start:end], expected)
        start = end
    assert request.has("weights") == any("weights" in d.loss_fn_inputs for d in datums)
    if "weights" not in datums[0].loss_fn_inputs:
        with pytest.raises(KeyError):
            request.column("weights")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=6))
def test_outputs_from_columns_are_cut_per_datum(lengths: list[int]) -> None:
    column = np.arange(sum(lengths), dtype=np.float32)
    result = ForwardBackwardOutput.from_columns({"logprobs": column}, lengths, {"loss:sum": 1.0})
    expected = []
    start = 0
    for n in lengths:
        expected.append({"logprobs": TensorData(column[start : start + n].copy())})
        start += n
    assert result == ForwardBackwardOutput(expected, {"loss:sum": 1.0})
    assert [list(x) for x in result.logprobs] == [list(e["logprobs"].data) for e in expected]
    with pytest.raises(ValidationError, match="'logprobs' tensor"):
        ForwardBackwardOutput.from_columns({"advantages": np.zeros(2, np.float32)}, [2], {})
    with pytest.raises(ValidationError, match=r"ForwardBackwardOutput.logprobs.*shape \(2,\)"):
        ForwardBackwardOutput.from_columns({"logprobs": np.zeros(3, np.float32)}, [2], {})


@settings(max_examples=50, deadline=None)
@given(batch_weights.filter(lambda rows: sum(sum(r[1:]) for r in rows) > 0))
def test_normalised_batch_divides_every_weight_by_the_batch_total(
    rows: list[list[float]],
) -> None:
    batch = [Datum.from_tokens(list(range(len(w))), w) for w in rows]
    total = np.float32(sum(np.float32(x) for w in rows for x in w[1:]))
    normalised = normalised_batch(batch)
    for before, after in zip(batch, normalised, strict=True):
        expected = before.loss_fn_inputs["weights"].data / total
        np.testing.assert_allclose(after.loss_fn_inputs["weights"].data, expected, rtol=1e-6)
        assert after.model_input is before.model_input
        assert not after.loss_fn_inputs["weights"].data.flags.writeable
    assert sum(float(d.loss_fn_inputs["weights"].data.sum()) for d in normalised) == (
        pytest.approx(1.0, rel=1e-5)
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.booleans(), st.booleans()), min_size=1, max_size=5))
def test_padded_batch_rows_are_the_datums_inputs(rows: list[tuple[int, bool, bool]]) -> None:
    """Each datum fills its row from column 0; without weights it weighs 1 on its tokens,
    without sampler logprobs or advantages it has zeros; padding is zero everywhere."""
    datums = []
    for i, (n, weighted, sampled) in enumerate(rows):
        inputs: dict[str, np.ndarray] = {"target_tokens": np.arange(n, dtype=np.int64) + i}
        if weighted:
            inputs["weights"] = np.linspace(0.1, 1.0, n, dtype=np.float32)
        if sampled:
            inputs["logprobs"] = -np.arange(n, dtype=np.float32) - i
            inputs["advantages"] = np.full(n, float(i + 1), np.float32)
        datums.append(Datum(ModelInput.from_ints(list(range(i, i + n))), inputs))
    normalise = data_is_weighted(datums)
    request = ForwardBackwardInput(normalised_batch(datums) if normalise else datums)
    padded = pad_batch(request, (4, 8, 16), 1)
    assert padded.lengths == tuple(n for n, _, _ in rows)
    for i, datum in enumerate(request.data):
        n = datum.model_input.length
        inputs = datum.loss_fn_inputs
        expected = {
            "tokens": datum.model_input.token_array,
            "targets": inputs["target_tokens"].data,
            "weights": inputs["weights"].data if "weights" in inputs else np.ones(n),
            "sampler_logprobs": inputs["logprobs"].data if "logprobs" in inputs else np.zeros(n),
            "advantages": inputs["advantages"].data if "advantages" in inputs else np.zeros(n),
        }
        for name, values in expected.items():
            row = getattr(padded, name)[i]
            np.testing.assert_allclose(row[:n], values, rtol=1e-6)
            assert not row[n:].any()
    for name in expected:
        assert not getattr(padded, name)[len(rows) :].any()


def data_is_weighted(datums: list[Datum]) -> bool:
    """``normalised_batch`` needs every datum weighted and some weight above 0."""
    weights = [d.loss_fn_inputs.get("weights") for d in datums]
    return all(w is not None for w in weights) and sum(float(w.data.sum()) for w in weights) > 0
