"""Datums that open with the same loss-free tokens share a row in the JAX adapter: each still
sees exactly its own tokens, its loss counts once, and its logprobs and gradient are those
of a row of its own."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from galley.adapters.jax import JaxTrainingClient
from galley.adapters.jax.batching import pad_batch
from galley.adapters.noop import NoopBlobStore, NoopHubClient
from galley.core import AdamParams, Datum, LoraConfig, ModelInput, SessionConfig
from galley.core.domain.losses import LossFn
from galley.core.domain.rl import rollout_datum
from galley.core.domain.types import ForwardBackwardInput
from tests.hf_models import make_model

BUCKETS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
COLUMNS = ("tokens", "targets", "weights", "sampler_logprobs", "advantages")


def group_datums(
    draw: st.DrawFn, head: list[int], tails: list[int], loss: LossFn, seed: int
) -> list[Datum]:
    """Datums opening with ``head``, each with its own tail, loss-free over the head."""
    rng = np.random.default_rng(seed)
    out = []
    for tail in tails:
        tokens = [*head, *rng.integers(0, 50, tail).tolist()]
        free = len(head) - 1  # the last head token's target is the datum's own
        scale = np.r_[np.zeros(free), rng.uniform(0.5, 2.0, len(tokens) - free)]
        inputs: dict[str, np.ndarray] = {
            "target_tokens": np.r_[tokens[1:], rng.integers(0, 50, 1)].astype(np.int64),
            "logprobs": np.r_[np.zeros(free), -rng.random(len(tokens) - free)].astype(np.float32),
        }
        if loss is LossFn.CROSS_ENTROPY:
            inputs["weights"] = scale.astype(np.float32)
        else:
            sign = draw(st.sampled_from([-1.0, 1.0]))
            inputs["advantages"] = (scale * sign).astype(np.float32)
        out.append(Datum(ModelInput.from_ints(tokens), inputs))
    return out


@st.composite
def shared_requests(draw: st.DrawFn) -> ForwardBackwardInput:
    loss = draw(st.sampled_from([LossFn.CROSS_ENTROPY, LossFn.IMPORTANCE_SAMPLING]))
    data: list[Datum] = []
    for g in range(draw(st.integers(1, 3))):
        head = draw(st.lists(st.integers(0, 49), min_size=2, max_size=40))
        tails = draw(st.lists(st.integers(1, 6), min_size=1, max_size=8))
        data += group_datums(draw, head, tails, loss, seed=g)
    order = draw(st.permutations(range(len(data))))
    return ForwardBackwardInput([data[i] for i in order], loss)


@settings(max_examples=150, deadline=None)
@given(shared_requests())
def test_each_datum_sees_exactly_its_own_tokens_and_its_loss_counts_once(
    request: ForwardBackwardInput,
) -> None:
    batch = pad_batch(request, BUCKETS, 1)
    width = batch.tokens.shape[1]
    ends = np.cumsum(batch.lengths)
    spans = np.split(batch.gather, ends[:-1])
    flat = {name: getattr(batch, name).reshape(-1) for name in COLUMNS}
    for datum, span in zip(request.data, spans, strict=True):
        inputs = datum.loss_fn_inputs
        np.testing.assert_array_equal(flat["tokens"][span], datum.model_input.token_array)
        np.testing.assert_array_equal(flat["targets"][span], inputs["target_tokens"].data)
        for name, key in (("weights", "weights"), ("advantages", "advantages")):
            if key in inputs:
                np.testing.assert_array_equal(flat[name][span], inputs[key].data)
        if batch.segments is None:
            continue
        assert len(set(span // width)) == 1  # one row
        np.testing.assert_array_equal(batch.positions.reshape(-1)[span], np.arange(len(span)))
        row, columns = span[0] // width, span % width
        seg = batch.segments[row]
        for j, q in enumerate(columns):
            keys = np.arange(width)
            sees = (keys <= q) & ((seg == 0) | (seg == seg[q]))
            assert set(keys[sees]) == set(columns[: j + 1])
    # Positions read by several datums (a shared head) and padding add nothing to the loss.
    scale = flat["weights" if request.loss_fn is LossFn.CROSS_ENTROPY else "advantages"]
    reads = np.bincount(batch.gather, minlength=scale.size)
    assert not scale[reads != 1].any()


def rl_shaped(groups: int, group: int, head: int, tail: int) -> list[Datum]:
    rng = np.random.default_rng(0)
    data = []
    for _ in range(groups):
        prompt = rng.integers(2, 50, head).tolist()
        for _ in range(group):
            tokens = rng.integers(2, 50, tail).tolist()
            logprobs = (-rng.random(tail)).tolist()
            data.append(rollout_datum(prompt, tokens, logprobs, float(rng.normal())))
    return data


def test_an_rl_batch_shares_its_prompts_and_halves_the_padded_size() -> None:
    request = ForwardBackwardInput(rl_shaped(8, 8, 40, 16), "importance_sampling")
    buckets = (32, 64, 128, 256, 512)
    shared, plain = (
        pad_batch(request, buckets, 1),
        pad_batch(request, buckets, 1, share_heads=False),
    )
    assert shared.segments is not None and plain.segments is None
    assert shared.tokens.shape == (8, 256) and plain.tokens.shape == (64, 64)
    # Cross-entropy weighs every token of these datums (no weights: 1), so nothing is shared.
    assert pad_batch(ForwardBackwardInput(request.data), buckets, 1).segments is None


def test_shared_rows_give_the_logprobs_loss_and_gradient_of_rows_of_their_own(
    tmp_path: Path,
) -> None:
    folder = make_model(tmp_path / "m", "llama")
    client = JaxTrainingClient(NoopHubClient(), NoopBlobStore(), length_buckets=(16, 32, 64, 128))
    config = SessionConfig(str(folder), LoraConfig(rank=4))
    shared, alone = client.start_session(config), client.start_session(config)
    for session in (shared, alone):  # a non-zero LoRA B, so the adapter's gradient is live
        session.forward_backward([rollout_datum([0, 5], [6, 7, 8], [-1.0] * 3, 1.0)], "ppo")
        session.optim_step(AdamParams(learning_rate=0.05)).result()
    data = rl_shaped(3, 4, 12, 5)
    request = ForwardBackwardInput(data, "importance_sampling")
    assert pad_batch(request, client.length_buckets, 1).segments is not None
    together = shared.forward_backward(data, "importance_sampling").result()
    losses = [alone.forward_backward([d], "importance_sampling").result() for d in data]
    for got, single in zip(together.logprobs, losses, strict=True):
        np.testing.assert_allclose(got, single.logprobs[0], atol=1e-5)
    total = sum(out.metrics["loss:sum"] for out in losses)
    assert abs(together.metrics["loss:sum"] - total) <= 1e-4 * max(1.0, abs(total))
    grads = [jax.tree.leaves(s._grads) for s in (shared, alone)]  # type: ignore[attr-defined]
    assert any(np.abs(np.asarray(g)).max() > 0 for g in grads[0])
    for a, b in zip(*grads, strict=True):
        scale = float(np.abs(np.asarray(b)).max()) or 1.0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * scale)
