"""Softmax attention over grouped query heads, in a layout XLA runs as plain batched matmuls.

Queries are ``[B, kv_heads, T·groups, D]``: the ``groups`` query heads that share a KV head
are interleaved along the row axis (row ``t·groups + g``), so both products are batched
matmuls over ``(B, kv_heads)`` with no 5-D grouped contraction (whose transposes dominated
the backward). Keys and values are ``[B, kv_heads, S, D]``.

``causal_attention`` is the training path: its mask is known, so query rows are cut into
chunks and each chunk only meets the keys at or before its last position, skipping most of
the masked-out upper triangle (about 35% of attention time at T=256, more at longer T).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_MASKED = float(np.finfo(np.float32).min)
_MIN_CHUNK = 64  # shorter query chunks cost more in per-op overhead than they save
_MAX_CHUNKS = 8


def attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """softmax(q·kᵀ/√D where ``mask``) · v; ``mask``: [B, 1, rows, S], softmax in float32."""
    scores = jnp.einsum("bkqd,bksd->bkqs", q * (1.0 / np.sqrt(q.shape[-1])), k)
    scores = jnp.where(mask, scores.astype(jnp.float32), _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkqs,bksd->bkqd", probs, v)


def group_mask(mask: Array, groups: int) -> Array:
    """[B, T, S] (which keys each position sees) → [B, 1, T·groups, S] for the row layout."""
    return jnp.repeat(mask, groups, axis=1)[:, None]


def causal_attention(q: Array, k: Array, v: Array, groups: int) -> Array:
    """Attention where position t sees keys 0..t (queries and keys cover the same T)."""
    t = k.shape[2]
    chunks = max(1, min(_MAX_CHUNKS, t // _MIN_CHUNK))
    while t % chunks:
        chunks -= 1
    size = t // chunks
    causal = group_mask(jnp.tril(jnp.ones((t, t), bool))[None], groups)
    outputs = []
    for c in range(chunks):
        rows = slice(c * size * groups, (c + 1) * size * groups)
        keys = (c + 1) * size
        outputs.append(
            attention(q[:, :, rows], k[:, :, :keys], v[:, :, :keys], causal[:, :, rows, :keys])
        )
    return jnp.concatenate(outputs, axis=2) if chunks > 1 else outputs[0]
