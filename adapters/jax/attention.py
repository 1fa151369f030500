"""Softmax attention over grouped query heads, in a layout XLA runs as plain batched matmuls.

Queries are ``[B, kv_heads, T·groups, D]``: the ``groups`` query heads that share a KV head
are interleaved along the row axis (row ``t·groups + g``), so both products are batched
matmuls over ``(B, kv_heads)`` with no 5-D grouped contraction (whose transposes dominated
the backward). Keys and values are ``[B, kv_heads, S, D]``.

``causal_attention`` is the training path: its mask is known, so query rows are cut into
chunks and each chunk only meets the keys at or before its last position, skipping most of
the masked-out upper triangle (about 35% of attention time at T=256, more at longer T).
Rows that hold several sequences (packed datums, or tails sharing a head) add segment ids
to that mask: a position sees the keys of its own segment and of segment 0 (a shared head).

``decode_attention`` is sampling's path for one new position per row: its keys come from a
KV cache that stores them transposed, ``[B, kv_heads, D, S]``, so the score product streams
the cache with positions contiguous (faster than ``[S, D]`` keys at a few rows: see
docs/performance.md).

``attention`` has a hand-written backward: the ``delta`` form of the softmax gradient
(rowsum(dO·O) instead of a pass over the S-wide gradient of the softmax) saves a pass over
the widest array of attention's backward.

``Scores`` says how scores are scaled (1/√D, or Gemma's ``query_pre_attn_scalar``) and
soft-capped (Gemma 2); ``Window`` limits a sliding-window layer's keys to the nearest ones.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_MASKED = float(np.finfo(np.float32).min)
_MIN_CHUNK = 64  # shorter query chunks cost more in per-op overhead than they save
_MAX_CHUNKS = 8


class Scores(NamedTuple):
    """How attention scores are formed from q·kᵀ: scaled, then, with a ``softcap``, squashed
    to cap·tanh(score/cap). Static: part of the compiled program."""

    scale: float
    softcap: float | None = None

    @staticmethod
    def standard(head_dim: int) -> Scores:
        return Scores(head_dim**-0.5)


class Window(NamedTuple):
    """A sliding-window layer's limit: a query sees keys fewer than ``size`` positions
    before it (itself included), as HF's ``sliding_window``."""

    size: int
    slides: Array | None = None  # traced: this layer slides (models mixing kinds); None: it does

    def near(self, query_at: Array, key_at: Array) -> Array:
        """[B, Tq, Tk] from query positions [B, Tq] and key positions [B, Tk]."""
        near = (query_at[:, :, None] - key_at[:, None, :]) < self.size
        return near if self.slides is None else near | ~self.slides


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention(q: Array, k: Array, v: Array, mask: Array, scores: Scores) -> Array:
    """softmax(``scores`` of q·kᵀ where ``mask``) · v; ``mask``: [B, 1, rows, S], softmax in
    float32."""
    return _attention_forward(q, k, v, mask, scores)[0]


def _scores(q: Array, k: Array, scores: Scores, transposed: bool = False) -> Array:
    # Python floats keep bf16 operands bf16.
    spec = "bkqd,bkds->bkqs" if transposed else "bkqd,bksd->bkqs"
    raw = jnp.einsum(spec, q * scores.scale, k)
    if scores.softcap is None:
        return raw
    cap = scores.softcap
    return (jnp.tanh(raw.astype(jnp.float32) / cap) * cap).astype(raw.dtype)


def _probabilities(q: Array, k: Array, mask: Array, scores: Scores) -> Array:
    return _masked_softmax(_scores(q, k, scores), mask)


def _masked_softmax(scores: Array, mask: Array) -> Array:
    scores = jnp.where(mask, scores.astype(jnp.float32), _MASKED)
    exp = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    return exp / jnp.sum(exp, axis=-1, keepdims=True)


def decode_attention(q: Array, keys_t: Array, v: Array, mask: Array, scores: Scores) -> Array:
    """``attention`` (forward only) with keys stored transposed: ``keys_t`` [B, kv, D, S]."""
    probs = _masked_softmax(_scores(q, keys_t, scores, transposed=True), mask)
    return jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), v)


def _attention_forward(
    q: Array, k: Array, v: Array, mask: Array, scores: Scores
) -> tuple[Array, tuple[Array, ...]]:
    probs = _probabilities(q, k, mask, scores)
    out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), v)
    return out, (q, k, v, mask, probs, out)


def _attention_backward(
    scores: Scores, residuals: tuple[Array, ...], d_out: Array
) -> tuple[Array, Array, Array, None]:
    q, k, v, mask, probs, out = residuals
    d_v = jnp.einsum("bkqs,bkqd->bksd", probs.astype(d_out.dtype), d_out)
    d_probs = jnp.einsum("bkqd,bksd->bkqs", d_out, v).astype(jnp.float32)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True)
    # Masked scores get no gradient, even in a row with nothing visible (uniform probs).
    d_capped = jnp.where(mask, probs * (d_probs - delta), 0.0)
    if scores.softcap is not None:  # through cap·tanh(s/cap): the raw scores again, not kept
        squashed = jnp.tanh(jnp.einsum("bkqd,bksd->bkqs", q * scores.scale, k) / scores.softcap)
        d_capped = d_capped * (1.0 - jnp.square(squashed.astype(jnp.float32)))
    d_scores = d_capped.astype(q.dtype)
    d_q = jnp.einsum("bkqs,bksd->bkqd", d_scores, k) * scores.scale
    d_k = jnp.einsum("bkqs,bkqd->bksd", d_scores, q) * scores.scale
    return d_q, d_k, d_v, None


attention.defvjp(_attention_forward, _attention_backward)


def group_mask(mask: Array, groups: int) -> Array:
    """[B, T, S] (which keys each position sees) → [B, 1, T·groups, S] for the row layout."""
    return jnp.repeat(mask, groups, axis=1)[:, None]


def chunk_size(t: int) -> int:
    """How many query positions each chunk of causal attention over ``t`` positions holds."""
    chunks = max(1, min(_MAX_CHUNKS, t // _MIN_CHUNK))
    while t % chunks:
        chunks -= 1
    return t // chunks


def causal_attention(
    q: Array,
    k: Array,
    v: Array,
    groups: int,
    scores: Scores,
    segments: Array | None = None,
    window: tuple[Window, Array] | None = None,
) -> Array:
    """Attention where position t sees keys 0..t (queries and keys cover the same T) and, with
    ``segments`` ([B, T] ids), only those of its own segment or of segment 0; with a
    ``window`` (and the positions [B, T] of queries and keys), only the nearest ones."""
    t = k.shape[2]
    size = chunk_size(t)
    chunks = t // size
    causal = jnp.tril(jnp.ones((t, t), bool))[None]
    outputs = []
    for c in range(chunks):
        queries, keys = slice(c * size, (c + 1) * size), (c + 1) * size
        sees = causal[:, queries, :keys]
        if segments is not None:
            seg_k = segments[:, None, :keys]
            sees = sees & ((seg_k == 0) | (seg_k == segments[:, queries, None]))
        if window is not None:
            limit, positions = window
            sees = sees & limit.near(positions[:, queries], positions[:, :keys])
        rows = slice(c * size * groups, (c + 1) * size * groups)
        outputs.append(
            attention(
                q[:, :, rows], k[:, :, :keys], v[:, :, :keys], group_mask(sees, groups), scores
            )
        )
    return jnp.concatenate(outputs, axis=2) if chunks > 1 else outputs[0]
