"""The JAX adapter's hand-written pieces against plain autodiff of their textbook form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import galley.adapters.jax.layers as layers_module
from galley.adapters.hf.model_files import SafetensorsReader
from galley.adapters.jax.attention import (
    Scores,
    Window,
    attention,
    causal_attention,
    group_mask,
)
from galley.adapters.jax.build import build_model
from galley.adapters.jax.config import read_config
from galley.adapters.jax.generate import filter_logits, sample_categorical
from galley.adapters.jax.layers import swiglu
from galley.adapters.jax.linear import SKINNY_ROWS, times_transposed
from galley.adapters.jax.lora import lora_project, merge_is_cheaper
from galley.core import LoraConfig
from tests.hf_models import make_model


def textbook(
    x: jax.Array,
    kernels: tuple[jax.Array, ...],
    lora_as: tuple[jax.Array, ...],
    lora_bs: tuple[jax.Array, ...],
    scale: float,
) -> tuple[jax.Array, ...]:
    return tuple(
        x @ w + (x @ a) @ b * scale for w, a, b in zip(kernels, lora_as, lora_bs, strict=True)
    )


@pytest.mark.parametrize("rows", [3, 400])  # 3: the unmerged path; 400: merged, one matmul
@pytest.mark.parametrize("outs", [(24,), (24, 8, 8)])
def test_lora_project_matches_autodiff(rows: int, outs: tuple[int, ...]) -> None:
    fan_in, rank, scale = 16, 4, 2.0
    keys = iter(jax.random.split(jax.random.key(0), 4 * len(outs) + 2))
    x = jax.random.normal(next(keys), (rows, fan_in))
    kernels = tuple(jax.random.normal(next(keys), (fan_in, o)) for o in outs)
    lora_as = tuple(jax.random.normal(next(keys), (fan_in, rank)) for _ in outs)
    lora_bs = tuple(jax.random.normal(next(keys), (rank, o)) for o in outs)
    weights = tuple(jax.random.normal(next(keys), (rows, o)) for o in outs)
    assert merge_is_cheaper(rows, kernels) == (rows > 3)

    def loss(fn, x, kernels, lora_as, lora_bs):  # type: ignore[no-untyped-def]
        ys = fn(x, kernels, lora_as, lora_bs, scale)
        return sum(jnp.sum(y * w) for y, w in zip(ys, weights, strict=True))

    args = (x, kernels, lora_as, lora_bs)
    want = jax.grad(lambda *a: loss(textbook, *a), argnums=(0, 1, 2, 3))(*args)
    got = jax.grad(lambda *a: loss(lora_project, *a), argnums=(0, 1, 2, 3))(*args)
    assert float(loss(lora_project, *args)) == pytest.approx(float(loss(textbook, *args)), rel=1e-4)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("length", [8, 128, 192, 512])  # 1, 2, 3 and 8 query chunks
def test_causal_attention_equals_masked_attention(length: int) -> None:
    batch, kv, groups, dim = 2, 2, 3, 8
    keys = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(keys[0], (batch, kv, length * groups, dim))
    k, v = (jax.random.normal(key, (batch, kv, length, dim)) for key in keys[1:3])
    g = jax.random.normal(keys[3], q.shape)
    mask = group_mask(jnp.tril(jnp.ones((length, length), bool))[None], groups)

    def masked(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return jnp.sum(attention(q, k, v, mask, Scores.standard(dim)) * g)

    def chunked(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return jnp.sum(causal_attention(q, k, v, groups, Scores.standard(dim)) * g)

    want = jax.value_and_grad(masked, argnums=(0, 1, 2))(q, k, v)
    got = jax.value_and_grad(chunked, argnums=(0, 1, 2))(q, k, v)
    for w, c in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(c), np.asarray(w), rtol=1e-4, atol=1e-4)


def textbook_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scores: Scores
) -> jax.Array:
    logits = jnp.einsum("bkqd,bksd->bkqs", q, k) * scores.scale
    if scores.softcap is not None:
        logits = scores.softcap * jnp.tanh(logits / scores.softcap)
    probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("bkqs,bksd->bkqd", probs, v)


@pytest.mark.parametrize("scores", [Scores.standard(8), Scores(0.2, softcap=1.5)])
def test_attention_backward_matches_autodiff_of_the_textbook_form(scores: Scores) -> None:
    """Including a padded row that sees no key at all: masked scores get no gradient; and
    Gemma 2's form, another scale and scores soft-capped (at 1.5, where tanh bends)."""
    batch, kv, rows, length, dim = 2, 2, 6, 5, 8
    keys = jax.random.split(jax.random.key(2), 5)
    q = jax.random.normal(keys[0], (batch, kv, rows, dim))
    k, v = (jax.random.normal(key, (batch, kv, length, dim)) for key in keys[1:3])
    g = jax.random.normal(keys[3], q.shape)
    mask = jax.random.bernoulli(keys[4], 0.6, (batch, 1, rows, length)).at[0, 0, 2].set(False)

    def loss(fn: Any) -> Any:
        return jax.value_and_grad(
            lambda q, k, v: jnp.sum(fn(q, k, v, mask, scores) * g), argnums=(0, 1, 2)
        )(q, k, v)

    for want, got in zip(
        jax.tree.leaves(loss(textbook_attention)), jax.tree.leaves(loss(attention)), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slides", [None, True, False])
def test_sliding_window_attention_sees_only_the_nearest_keys(slides: bool | None) -> None:
    """A window of 5 over 128 positions (2 query chunks) on packed rows, positions restarting
    at each segment: equal to masked attention with the window written out, and (a layer
    whose traced flag says it does not slide) to plain causal attention."""
    batch, kv, groups, dim, length, size = 2, 2, 2, 8, 128, 5
    keys = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(keys[0], (batch, kv, length * groups, dim))
    k, v = (jax.random.normal(key, (batch, kv, length, dim)) for key in keys[1:])
    segments = jnp.asarray(np.repeat([[1, 2], [1, 1]], [40, 88], axis=1))
    positions = jnp.asarray(np.concatenate([np.arange(40), np.arange(88)]))[None].repeat(2, 0)
    positions = positions.at[1].set(jnp.arange(length))  # row 1 is one sequence
    window = Window(size, None if slides is None else jnp.asarray(slides))
    got = causal_attention(q, k, v, groups, Scores.standard(dim), segments, (window, positions))
    rows, cols = np.arange(length)[:, None], np.arange(length)[None, :]
    sees = (cols <= rows) & (segments[:, None, :] == segments[:, :, None])
    if slides is not False:
        sees = sees & (rows - cols < size)
    want = attention(q, k, v, group_mask(sees, groups), Scores.standard(dim))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def reference_filter(
    logits: np.ndarray,  # type: ignore[type-arg]
    top_k: int,
    top_p: float,
) -> tuple[np.ndarray, float]:  # type: ignore[type-arg]
    """Top-k, then the smallest prefix of the ranking whose mass before it is < top_p (all of
    it at top_p = 1), in float64; and how close any token's mass came to the top_p boundary."""
    out, margin = logits.copy(), np.inf
    for row in out:
        order = np.argsort(-row, kind="stable")
        kept = order[: top_k if top_k > 0 else len(row)]
        probs = np.exp(row[kept].astype(np.float64) - row[kept].max())
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        if top_p < 1.0:
            margin = min(margin, float(np.abs(before - top_p).min()))
        threshold = row[kept][(before < top_p) | (top_p >= 1.0)].min()
        row[row < threshold] = -np.inf
    return out, margin


@given(
    seed=st.integers(0, 10_000),
    top_k=st.one_of(st.just(-1), st.integers(1, 40)),
    top_p=st.floats(0.05, 1.0),
)
@example(seed=273, top_k=-1, top_p=1.0)  # float32 rounding once cut the tail at top_p = 1
@settings(max_examples=60, deadline=None)
def test_top_k_top_p_filter_matches_reference(seed: int, top_k: int, top_p: float) -> None:
    logits = np.random.default_rng(seed).standard_normal((3, 32)).astype(np.float32) * 3
    want, margin = reference_filter(logits, top_k, top_p)
    assume(margin > 1e-5)  # closer, float32 and float64 rounding may rightly disagree
    got = np.asarray(filter_logits(jnp.asarray(logits), jnp.int32(top_k), jnp.float32(top_p)))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_array_equal(got[~np.isinf(got)], want[~np.isinf(want)])


def test_top_p_one_keeps_every_top_k_token() -> None:
    logits = np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32) * 4
    kept = ~np.isinf(np.asarray(filter_logits(jnp.asarray(logits), jnp.int32(4096), 1.0)))
    assert kept.all()


def test_inverse_cdf_sampling_draws_from_the_softmax_and_never_a_masked_token() -> None:
    want = np.array([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    logits = jnp.log(jnp.asarray(want, jnp.float32))  # -inf for the two impossible tokens
    draws = 20_000
    keys = jax.random.split(jax.random.key(0), draws)
    picked = np.asarray(sample_categorical(keys, jnp.broadcast_to(logits, (draws, 6))))
    freq = np.bincount(picked, minlength=6) / draws
    assert freq[1] == freq[5] == 0
    np.testing.assert_allclose(freq, want, atol=0.015)  # about 4 standard errors


def test_swiglu_backward_matches_autodiff() -> None:
    keys = jax.random.split(jax.random.key(3), 3)
    gate, up, g = (jax.random.normal(k, (7, 11)) * 3 for k in keys)

    def textbook(gate: jax.Array, up: jax.Array) -> jax.Array:
        return jnp.sum(jax.nn.silu(gate) * up * g)

    def ours(gate: jax.Array, up: jax.Array) -> jax.Array:
        return jnp.sum(swiglu(gate, up) * g)

    want = jax.value_and_grad(textbook, argnums=(0, 1))(gate, up)
    got = jax.value_and_grad(ours, argnums=(0, 1))(gate, up)
    for w, o in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(o), np.asarray(w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rows", [1, SKINNY_ROWS, 40])  # few rows: multiply-and-sum; 40: GEMM
def test_times_transposed_is_x_times_kernel_transposed(dtype: Any, rows: int) -> None:
    keys = jax.random.split(jax.random.key(4), 2)
    x = jax.random.normal(keys[0], (rows, 96)).astype(dtype)
    kernel = jax.random.normal(keys[1], (200, 96)).astype(dtype)
    want = np.asarray(x, np.float32) @ np.asarray(kernel, np.float32).T
    got = times_transposed(x, kernel)
    assert got.dtype == dtype and got.shape == (rows, 200)
    # bf16 output rounds to 8 bits of mantissa: measured relative error <= 0.004 (2**-8)
    tolerance = 1e-4 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tolerance, atol=tolerance)


def test_fused_attention_path_keeps_the_head_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU's fused causal attention (cuDNN) takes [B, T, heads, D] straight from the
    projections; run through the same code with XLA's kernel, logits and gradients match the
    CPU path's (4 query heads on 2 KV heads, so a wrong grouping would show)."""
    folder = make_model(tmp_path / "m", "llama")
    cfg = read_config(folder)
    model = build_model(cfg, SafetensorsReader(folder), LoraConfig(rank=2), jnp.float32)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24)))
    positions = jnp.broadcast_to(jnp.arange(24), (2, 24))
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)

    def loss(lora: Any) -> jax.Array:
        logits, _ = nnx.merge(graphdef, lora, rest)(tokens, positions)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 3]), logits

    (_, plain), plain_grads = jax.value_and_grad(loss, has_aux=True)(lora)
    assert layers_module.fused_attention(jnp.bfloat16) is None  # on this CPU
    monkeypatch.setattr(layers_module, "fused_attention", lambda dtype: "xla")
    (_, fused), fused_grads = jax.value_and_grad(loss, has_aux=True)(lora)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(plain), atol=1e-4)
    for a, b in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(plain_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
