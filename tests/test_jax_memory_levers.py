"""The JAX adapter's memory and padding levers change how a step runs, never what it
computes: packed rows, micro-batches, rematerialised layers and chunked logits each give the
log-probabilities, loss and gradient of the plain path (fp32, to 1e-5 of their scale)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.jax.batching import pad_batch
from galley.adapters.jax.scan import per_layer
from galley.adapters.jax.state_files import flat_named
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, SessionConfig
from galley.core.domain.types import ForwardBackwardInput
from galley.core.errors import ConfigError
from tests.hf_models import make_model

BUCKETS = (16, 32, 64, 128, 256)


def datums(lengths: Sequence[int], seed: int = 0) -> list[Datum]:
    """Datums of ``lengths`` tokens, random weights (some 0, as a prompt's)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        weights = rng.uniform(0.0, 1.0, n) * (rng.random(n) > 0.3)
        out.append(Datum.from_tokens(rng.integers(3, 300, n).tolist(), weights.tolist()))
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(2, 120), min_size=1, max_size=24), st.sampled_from([1, 2, 4]))
def test_a_packed_datum_sees_only_itself_at_positions_from_zero(
    lengths: list[int], row_multiple: int
) -> None:
    request = ForwardBackwardInput(datums(lengths))
    batch = pad_batch(request, BUCKETS, row_multiple, packing=True)
    plain = pad_batch(request, BUCKETS, row_multiple, packing=False)
    rows, width = batch.tokens.shape
    assert rows % row_multiple == 0
    assert rows * width <= plain.tokens.size  # packing is used only where it saves
    spans = np.split(batch.gather, np.cumsum(batch.lengths)[:-1])
    flat_tokens, flat_weights = batch.tokens.reshape(-1), batch.weights.reshape(-1)
    for datum, span in zip(request.data, spans, strict=True):
        np.testing.assert_array_equal(flat_tokens[span], datum.model_input.token_array)
        np.testing.assert_array_equal(flat_weights[span], datum.loss_fn_inputs["weights"].data)
        if batch.segments is None:
            continue
        assert len(set(span // width)) == 1  # one row, in order
        np.testing.assert_array_equal(batch.positions.reshape(-1)[span], np.arange(len(span)))
        row, columns = span[0] // width, span % width
        seg = batch.segments[row]
        assert (seg[columns] == seg[columns[0]]).all() and seg[columns[0]] > 0
        assert (seg == seg[columns[0]]).sum() == len(span)  # nothing else in its segment
    # Every position is read once at most, and padding weighs nothing.
    reads = np.bincount(batch.gather, minlength=flat_weights.size)
    assert reads.max() == 1 and not flat_weights[reads == 0].any()


def test_mixed_lengths_pack_into_a_quarter_of_the_padded_rows() -> None:
    request = ForwardBackwardInput(datums([200, 20, 30, 15, 60, 40, 25, 10]))
    packed = pad_batch(request, BUCKETS, 1, packing=True)
    plain = pad_batch(request, BUCKETS, 1, packing=False)
    assert plain.tokens.shape == (8, 256) and packed.tokens.shape == (2, 256)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("levers") / "m", "llama", num_hidden_layers=3)


DATA = datums([5, 17, 40, 9, 3, 60, 12, 25, 33, 7], seed=1)


Named = dict[str, np.ndarray]


def step(folder: Path, rank: int, micro: int = 0, **options: Any) -> tuple[Any, Named, Named]:
    """One forward-backward of DATA and one AdamW step: (output, gradients, new weights),
    the arrays named per layer however the session holds them (scanned or not)."""
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), length_buckets=BUCKETS, **options)
    config = SessionConfig(str(folder), LoraConfig(rank=rank, seed=3), micro_batch_size=micro)
    session: Any = client.start_session(config)
    if rank:  # a non-zero LoRA B first, so every adapter's gradient is live
        session.forward_backward(DATA[:2]).result()
        session.optim_step(AdamParams(learning_rate=0.05)).result()
    out = session.forward_backward(DATA).result()
    layers = session._layers
    grads = per_layer(flat_named(session._grads), layers)
    session.optim_step(AdamParams(learning_rate=1e-3)).result()
    return out, grads, per_layer(flat_named(session._trainable), layers)


def assert_same_step(
    got: tuple[Any, Named, Named], want: tuple[Any, Named, Named], *, weights: bool
) -> None:
    """The same logprobs, loss and gradient; with ``weights`` the same update too (AdamW's
    update of a gradient near 0 is about ±lr whatever its size, so only a lever that sums the
    same terms, micro-batches, is held to it)."""
    (out, grads, new), (out0, grads0, new0) = got, want
    for a, b in zip(out.logprobs, out0.logprobs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    loss, loss0 = out.metrics["loss:sum"], out0.metrics["loss:sum"]
    assert abs(loss - loss0) <= 1e-5 * max(1.0, abs(loss0))
    assert grads.keys() == grads0.keys()
    assert any(np.abs(g).max() > 0 for g in grads0.values())
    for name, g in grads0.items():
        np.testing.assert_allclose(grads[name], g, atol=1e-5 * max(float(np.abs(g).max()), 1.0))
    for name, w in new0.items() if weights else ():
        np.testing.assert_allclose(new[name], w, atol=1e-5 * max(float(np.abs(w).max()), 1.0))


@pytest.fixture(scope="module")
def plain(folder: Path) -> dict[int, Any]:
    """The plain path's step, LoRA (rank 4) and full fine-tuning (rank 0)."""
    return {rank: step(folder, rank, packing=False) for rank in (4, 0)}


LEVERS = {
    "packed": {"packing": True},
    "micro-batches of 3": {"micro": 3},
    "remat full": {"remat": "full"},
    "remat dots": {"remat": "dots"},
    "logits in chunks of 48": {"logits_chunk": 48},
    "all, scanned": {
        "packing": True,
        "micro": 4,
        "remat": "full",
        "logits_chunk": 64,
        "scan_layers": True,
    },
}


# Every lever on a LoRA; packing, and all of them at once, on full fine-tuning too.
CASES = [(lever, 4) for lever in LEVERS] + [("packed", 0), ("all, scanned", 0)]


@pytest.mark.parametrize(("lever", "rank"), CASES, ids=[f"{lv}-rank {r}" for lv, r in CASES])
def test_each_lever_gives_the_plain_steps_logprobs_gradient_and_update(
    folder: Path, plain: dict[int, Any], lever: str, rank: int
) -> None:
    options = dict(LEVERS[lever])
    options.setdefault("packing", False)
    assert_same_step(step(folder, rank, **options), plain[rank], weights=lever.startswith("micro"))


def test_a_packed_request_runs_as_packed_rows(folder: Path) -> None:
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), length_buckets=BUCKETS)
    assert client.rows.packing  # the default on a CPU
    session = client.start_session(SessionConfig(str(folder), LoraConfig(rank=4)))
    (batch,) = session._prepare(DATA, "cross_entropy", None)[1]  # type: ignore[attr-defined]
    assert batch.segments is not None and batch.tokens.size < 10 * 64
    passes = session._prepare(DATA, "cross_entropy", None)  # type: ignore[attr-defined]
    assert len(passes[1]) == 1
    micro = client.start_session(SessionConfig(str(folder), LoraConfig(rank=4), micro_batch_size=4))
    assert [len(b.lengths) for b in micro._prepare(DATA, "cross_entropy", None)[1]] == [4, 4, 2]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("remat", "some", "'some' is not one of none, full, dots"),
        ("logits_chunk", -1, "expected positions per chunk"),
    ],
)
def test_a_lever_set_wrong_is_refused_by_name(option: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JaxTrainingClient(NoopHubClient(), NoopBlobStore(), **{option: value})


def test_a_run_in_micro_batches_resumes_mid_run_exactly(folder: Path) -> None:
    """Four steps in passes of 3 datums, against two steps, a saved state, and two more in a
    new session in passes of 4: the accumulator is empty between steps, so the cut between
    passes is not part of what a checkpoint holds."""
    blobs = NoopBlobStore()

    def session(micro: int) -> Any:
        client = JaxTrainingClient(NoopHubClient(), blobs, length_buckets=BUCKETS)
        config = SessionConfig(str(folder), LoraConfig(rank=4), micro_batch_size=micro)
        return client.start_session(config)

    def train(s: Any, steps: range) -> list[float]:
        losses = []
        for k in steps:
            losses.append(s.forward_backward(DATA[k : k + 6]).result().metrics["loss:sum"])
            s.optim_step(AdamParams(learning_rate=1e-2)).result()
        return losses

    straight = session(3)
    losses = train(straight, range(4))
    first = session(3)
    resumed = train(first, range(2))
    ref = first.save_state("step-2").result()
    second = session(4)
    second.load_state(ref).result()
    resumed += train(second, range(2, 4))
    np.testing.assert_allclose(resumed, losses, rtol=1e-6)
    for name, w in flat_named(straight._trainable).items():
        np.testing.assert_allclose(flat_named(second._trainable)[name], w, atol=1e-6)
