"""The JAX Completer's compiled generation: prefill, then a decode loop over a KV cache that
grows in a few static phases (each attends only to as many positions as its tokens need), with
temperature, top-k, top-p and stop token ids as traced inputs. ``completer.py`` loads models,
batches prompts and turns the tokens into completions."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

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


class Prompts(NamedTuple):
    """The prompts, each once, and which one each sampled row continues."""

    tokens: Array  # int32 [R, P], left-padded
    mask: Array  # bool [R, P]
    row_prompts: Array  # int32 [B]


class Sampling(NamedTuple):
    """How every row draws its tokens: traced, so new values never recompile."""

    keys: Array  # [B] PRNG keys, one per row
    max_new: Array  # int32: tokens to generate (<= new_tokens)
    temperature: Array
    top_k: Array
    top_p: Array
    stop_ids: Array  # int32 [MAX_STOP_IDS], -1 = unused


class Prefilled(NamedTuple):
    """The prompts read once, spread over their rows."""

    logits: Array  # [B, V]: each row's logits after its prompt
    caches: list[tuple[Array, Array]]  # per layer: keys [B, H, D, P], values [B, H, P, D]
    valid: Array  # bool [B, P]: the positions a row attends to
    last_position: Array  # int32 [B]
    prompt_logprobs: Array  # [R, P] (zeros unless asked for)


class Decode(NamedTuple):
    """The decode loop's state: token ``i`` is picked next, from the cache of what came
    before it."""

    i: Array
    token: Array  # int32 [B]: the token picked last, fed next
    done: Array  # bool [B]
    generated: Array  # int32 [B]: tokens generated
    caches: list[tuple[Array, Array]]
    valid: Array  # bool [B, width]
    out: Array  # int32 [B, N]
    out_logprobs: Array  # [B, N]


def prefill(model: CausalLM, prompts: Prompts, prompt_logprobs: bool) -> Prefilled:
    """Each prompt fills a cache of its own length once, which its rows (its samples) copy:
    G samples of a prompt cost one prefill, not G."""
    cfg, (r, p) = model.cfg, prompts.tokens.shape
    positions = jnp.maximum(jnp.cumsum(prompts.mask, axis=1) - 1, 0)
    causal = jnp.tril(jnp.ones((p, p), bool))[None] & prompts.mask[:, None, :]
    dtype = model.embed_tokens[...].dtype
    empty = (
        jnp.zeros((r, cfg.num_kv_heads, cfg.head_dim, p), dtype),
        jnp.zeros((r, cfg.num_kv_heads, p, cfg.head_dim), dtype),
    )
    logits, caches = model(
        prompts.tokens,
        positions,
        causal,
        [empty] * cfg.num_layers,
        jnp.int32(0),
        last_only=not prompt_logprobs,
    )
    assert caches is not None
    prompt_logp = jnp.zeros((r, p))
    if prompt_logprobs:
        step_logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        picked = jnp.take_along_axis(step_logp, prompts.tokens[:, 1:, None], axis=-1)[..., 0]
        prompt_logp = jnp.concatenate([jnp.zeros((r, 1)), picked], axis=1)
    rows = prompts.row_prompts
    return Prefilled(
        logits[rows, -1],
        [(k[rows], v[rows]) for k, v in caches],
        prompts.mask[rows],
        positions[rows, -1],
        prompt_logp,
    )


def record_pick(state: Decode, logits: Array, sampling: Sampling) -> Decode:
    """Token ``state.i`` of every row from its logits, recorded unless the row is done."""
    keys = jax.vmap(jax.random.fold_in, (0, None))(sampling.keys, state.i)
    token, lp = _pick(logits, keys, sampling.temperature, sampling.top_k, sampling.top_p)
    done = state.done
    return state._replace(
        i=state.i + 1,
        token=token,
        out=state.out.at[:, state.i].set(jnp.where(done, 0, token)),
        out_logprobs=state.out_logprobs.at[:, state.i].set(jnp.where(done, 0.0, lp)),
        generated=state.generated + (~done).astype(jnp.int32),
        done=done | jnp.any(token[:, None] == sampling.stop_ids[None, :], axis=-1),
    )


def widen(state: Decode, width: int) -> Decode:
    """The cache padded to ``width`` positions, as a phase starts."""
    caches = [(_pad_positions(k, 3, width), _pad_positions(v, 2, width)) for k, v in state.caches]
    return state._replace(caches=caches, valid=_pad_positions(state.valid, 1, width))


def decode_step(model: CausalLM, first: Prefilled, sampling: Sampling, p: int) -> Any:
    """One loop iteration: feed token i-1 at its position, pick token i."""

    def step(state: Decode) -> Decode:
        at = p + state.i - 1
        valid = state.valid.at[:, at].set(True)
        positions = (first.last_position + state.i)[:, None]
        logits, caches = model(state.token[:, None], positions, valid[:, None, :], state.caches, at)
        assert caches is not None  # a decode step always returns its cache
        state = state._replace(caches=caches, valid=valid)
        return record_pick(state, logits[:, 0], sampling)

    return step


@partial(jax.jit, static_argnames=("graphdef", "new_tokens", "prompt_logprobs"))
def generate(
    graphdef: Any,
    state: Any,
    prompts: Prompts,
    sampling: Sampling,
    new_tokens: int,
    prompt_logprobs: bool = True,
) -> tuple[Array, Array, Array, Array]:
    """(tokens [B, N], logprobs [B, N], generated counts [B], prompt logprobs [R, P], zeros
    unless ``prompt_logprobs``).

    Token 0 comes from the prompt's last logits; then each loop iteration feeds token i-1
    and picks token i, so no step computes logits that nothing reads. The loop runs in
    phases (``phase_ends``), the cache widened to each phase's length as it starts."""
    model: CausalLM = nnx.merge(graphdef, state)
    first = prefill(model, prompts, prompt_logprobs)
    rows, p = prompts.row_prompts.shape[0], prompts.tokens.shape[1]
    decode = Decode(
        jnp.int32(0),
        jnp.zeros((rows,), jnp.int32),
        jnp.full((rows,), sampling.max_new <= 0),
        jnp.zeros((rows,), jnp.int32),
        first.caches,
        first.valid,
        jnp.zeros((rows, new_tokens), jnp.int32),
        jnp.zeros((rows, new_tokens), jnp.float32),
    )
    decode = record_pick(decode, first.logits, sampling)
    step = decode_step(model, first, sampling, p)
    for end in phase_ends(new_tokens):

        def more(state: Decode, end: int = end) -> Array:
            going: Array = (state.i < jnp.minimum(sampling.max_new, end)) & ~jnp.all(state.done)
            return going

        decode = jax.lax.while_loop(more, step, widen(decode, p + end))  # token i < end: p+i-1
    return decode.out, decode.out_logprobs, decode.generated, first.prompt_logprobs
