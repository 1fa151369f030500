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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_MASKED = float(np.finfo(np.float32).min)
_MIN_CHUNK = 64  # shorter query chunks cost more in per-op overhead than they save
_MAX_CHUNKS = 8


@jax.custom_vjp
def attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """softmax(q·kᵀ/√D where ``mask``) · v; ``mask``: [B, 1, rows, S], softmax in float32."""
    return _attention_forward(q, k, v, mask)[0]


def _probabilities(q: Array, k: Array, mask: Array) -> Array:
    return _masked_softmax(jnp.einsum("bkqd,bksd->bkqs", q * float(q.shape[-1]) ** -0.5, k), mask)


def _masked_softmax(scores: Array, mask: Array) -> Array:
    scores = jnp.where(mask, scores.astype(jnp.float32), _MASKED)
    exp = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    return exp / jnp.sum(exp, axis=-1, keepdims=True)


def decode_attention(q: Array, keys_t: Array, v: Array, mask: Array) -> Array:
    """``attention`` (forward only) with keys stored transposed: ``keys_t`` [B, kv, D, S]."""
    scores = jnp.einsum("bkqd,bkds->bkqs", q * float(q.shape[-1]) ** -0.5, keys_t)
    probs = _masked_softmax(scores, mask)
    return jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), v)


def _attention_forward(
    q: Array, k: Array, v: Array, mask: Array
) -> tuple[Array, tuple[Array, ...]]:
    probs = _probabilities(q, k, mask)
    out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), v)
    return out, (q, k, v, mask, probs, out)


def _attention_backward(
    residuals: tuple[Array, ...], d_out: Array
) -> tuple[Array, Array, Array, None]:
    q, k, v, mask, probs, out = residuals
    scale = float(q.shape[-1]) ** -0.5  # a Python float keeps bf16 operands bf16
    d_v = jnp.einsum("bkqs,bkqd->bksd", probs.astype(d_out.dtype), d_out)
    d_probs = jnp.einsum("bkqd,bksd->bkqs", d_out, v).astype(jnp.float32)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True)
    # Masked scores get no gradient, even in a row with nothing visible (uniform probs).
    d_scores = jnp.where(mask, probs * (d_probs - delta), 0.0).astype(q.dtype)
    d_q = jnp.einsum("bkqs,bksd->bkqd", d_scores, k) * scale
    d_k = jnp.einsum("bkqs,bkqd->bksd", d_scores, q) * scale
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
    q: Array, k: Array, v: Array, groups: int, segments: Array | None = None
) -> Array:
    """Attention where position t sees keys 0..t (queries and keys cover the same T) and, with
    ``segments`` ([B, T] ids), only those of its own segment or of segment 0."""
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
        rows = slice(c * size * groups, (c + 1) * size * groups)
        outputs.append(
            attention(q[:, :, rows], k[:, :, :keys], v[:, :, :keys], group_mask(sees, groups))
        )
    return jnp.concatenate(outputs, axis=2) if chunks > 1 else outputs[0]
