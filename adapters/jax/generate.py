"""The JAX Completer's compiled generation: prefill, then a decode loop over a KV cache that
grows in a few static phases (each attends only to as many positions as its tokens need), with
temperature, top-k, top-p and stop token ids as traced inputs. ``completer.py`` loads models,
batches prompts and turns the tokens into completions."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from galley.adapters.jax.model import CausalLM

MAX_STOP_IDS = 8
Array = jax.Array


def filter_logits(logits: Array, top_k: Array, top_p: Array) -> Array:
    """Mask logits outside the top-k and the top-p nucleus (k, p traced: no recompiles).
    One descending sort serves both filters: top-k only cuts the sorted tail."""
    vocab = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)
    rank = jnp.arange(vocab)
    in_top_k = rank < jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    probs = jax.nn.softmax(jnp.where(in_top_k, ordered, -jnp.inf), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above each
    # top_p = 1 keeps every token: rounding in the cumulative sum must not cut the tail.
    keep = in_top_k & ((before < top_p) | (top_p >= 1.0))
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def sample_categorical(key: Array, logits: Array) -> Array:
    """One draw per row from softmax(logits) by inverting the CDF with one uniform per row:
    the same distribution as ``jax.random.categorical``, which draws a Gumbel per vocabulary
    entry (65k random numbers per step at this batch, more than the model's attention)."""
    probs = jax.nn.softmax(logits, axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    target = jax.vmap(jax.random.uniform)(key)[:, None] * cdf[:, -1:]
    # The first token whose cumulative mass exceeds the target: it has probability > 0.
    picked = jnp.sum(cdf <= target, axis=-1)
    return jnp.where(picked < logits.shape[-1], picked, jnp.argmax(logits, axis=-1))


def _pick(
    logits: Array, key: Array, temperature: Array, top_k: Array, top_p: Array
) -> tuple[Array, Array]:
    """The token and its log-probability under the distribution it was drawn from: greedy at
    temperature 0 (the model's own log-probability); otherwise sampled from the logits
    scaled by the temperature and filtered, sorting the vocabulary only when a top-k or top-p
    filter is on (a sort per step would cost more than the model's forward)."""

    def sample() -> tuple[Array, Array]:
        scaled = logits / jnp.maximum(temperature, 1e-6)
        filtered = jax.lax.cond(
            (top_k > 0) | (top_p < 1.0),
            lambda: filter_logits(scaled, top_k, top_p),
            lambda: scaled,
        )
        return sample_categorical(key, filtered).astype(jnp.int32), filtered

    def greedy() -> tuple[Array, Array]:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), logits

    token, drawn_from = jax.lax.cond(temperature > 0, sample, greedy)
    lp = jnp.take_along_axis(jax.nn.log_softmax(drawn_from, axis=-1), token[:, None], axis=-1)
    return token, lp[:, 0]


# XLA on a CPU decodes one row ~20x slower than two (its single-row dot is a slow path), so
# a lone sample is decoded next to a padding row; on a GPU the extra row costs nothing.
MIN_DECODE_ROWS = 2
DECODE_PHASES = 4
MIN_PHASE = 32  # shorter phases save less attention than their extra compile costs


def phase_ends(new_tokens: int) -> list[int]:
    """Where decoding's phases end: each phase's loop attends to a cache only as long as its
    last token needs (on average 3/4 of the whole at 128 new tokens after a 64-token
    prompt), at the price of compiling the decode step once per phase."""
    size = max(MIN_PHASE, -(-new_tokens // DECODE_PHASES))
    return [*range(size, new_tokens, size), new_tokens]


def _pad_positions(array: Array, axis: int, width: int) -> Array:
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, width - array.shape[axis])
    return jnp.pad(array, pad)


@partial(jax.jit, static_argnames=("graphdef", "new_tokens", "prompt_logprobs"))
def generate(
    graphdef: Any,
    state: Any,
    tokens: Array,  # int32 [R, P], each prompt once, left-padded
    prompt_mask: Array,  # bool [R, P]
    row_prompts: Array,  # int32 [B]: the prompt each sampled row continues
    keys: Array,  # [B] PRNG keys, one per row
    max_new: Array,  # int32: tokens to generate (<= new_tokens)
    temperature: Array,
    top_k: Array,
    top_p: Array,
    stop_ids: Array,  # int32 [MAX_STOP_IDS], -1 = unused
    new_tokens: int,
    prompt_logprobs: bool = True,
) -> tuple[Array, Array, Array, Array]:
    """(tokens [B, N], logprobs [B, N], generated counts [B], prompt logprobs [B, P], zeros
    unless ``prompt_logprobs``).

    Each prompt fills a cache of its own length once, which its rows (its samples) copy:
    G samples of a prompt cost one prefill, not G. Token 0 comes from the prompt's last
    logits; then each loop iteration feeds token i-1 and picks token i, so no step computes
    logits that nothing reads. The loop runs in phases (``phase_ends``), the cache padded to
    each phase's length as it starts."""
    model: CausalLM = nnx.merge(graphdef, state)
    cfg = model.cfg
    r, p = tokens.shape
    b = row_prompts.shape[0]
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    causal = jnp.tril(jnp.ones((p, p), bool))[None] & prompt_mask[:, None, :]
    dtype = model.embed_tokens[...].dtype
    empty_keys = jnp.zeros((r, cfg.num_kv_heads, cfg.head_dim, p), dtype)
    empty_values = jnp.zeros((r, cfg.num_kv_heads, p, cfg.head_dim), dtype)
    logits, caches = model(
        tokens,
        positions,
        causal,
        [(empty_keys, empty_values)] * cfg.num_layers,
        jnp.int32(0),
        last_only=not prompt_logprobs,
    )
    assert caches is not None
    if prompt_logprobs:
        step_logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        prompt_logp = jnp.take_along_axis(step_logp, tokens[:, 1:, None], axis=-1)[..., 0]
        prompt_logp = jnp.concatenate([jnp.zeros((r, 1)), prompt_logp], axis=1)
    else:
        prompt_logp = jnp.zeros((r, p))
    caches = [(k[row_prompts], v[row_prompts]) for k, v in caches]
    logits, prompt_mask = logits[row_prompts], prompt_mask[row_prompts]
    last_pos = positions[row_prompts, -1]

    def pick(i: Array, logits: Array, done: Array, count: Array, out: Array, out_lp: Array) -> Any:
        """Token i of every row from its logits, recorded unless the row is done."""
        token, lp = _pick(
            logits, jax.vmap(jax.random.fold_in, (0, None))(keys, i), temperature, top_k, top_p
        )
        out = out.at[:, i].set(jnp.where(done, 0, token))
        out_lp = out_lp.at[:, i].set(jnp.where(done, 0.0, lp))
        count = count + (~done).astype(jnp.int32)
        done = done | jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
        return token, done, count, out, out_lp

    def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
        i, token, done, count, caches, valid, out, out_lp = carry
        valid = valid.at[:, p + i - 1].set(True)
        step_logits, caches = model(
            token[:, None], (last_pos + i)[:, None], valid[:, None, :], caches, p + i - 1
        )
        token, done, count, out, out_lp = pick(i, step_logits[:, 0], done, count, out, out_lp)
        return i + 1, token, done, count, caches, valid, out, out_lp

    token, done, count, out, out_lp = pick(
        jnp.int32(0),
        logits[:, -1],
        jnp.full((b,), max_new <= 0),
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b, new_tokens), jnp.int32),
        jnp.zeros((b, new_tokens), jnp.float32),
    )
    carry: tuple[Any, ...] = (jnp.int32(1), token, done, count, caches, prompt_mask, out, out_lp)
    for end in phase_ends(new_tokens):
        width = p + end  # token i < end is fed at position p + i - 1
        i, token, done, count, caches, valid, out, out_lp = carry
        caches = [(_pad_positions(k, 3, width), _pad_positions(v, 2, width)) for k, v in caches]
        carry = (i, token, done, count, caches, _pad_positions(valid, 1, width), out, out_lp)

        def cond(carry: tuple[Any, ...], end: int = end) -> Array:
            i, done = carry[0], carry[2]
            keep_going: Array = (i < jnp.minimum(max_new, end)) & ~jnp.all(done)
            return keep_going

        carry = jax.lax.while_loop(cond, body, carry)
    return carry[6], carry[7], carry[3], prompt_logp
