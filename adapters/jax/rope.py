"""Rotary position embeddings as HF checkpoints configure them: the base and its scalings
(``linear``, ``llama3``, Phi-3's ``longrope``), read from old and new ``config.json`` formats,
and the cos/sin tables a forward rotates queries and keys by."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np

from galley.core.errors import ValidationError

Array = jax.Array
KINDS = ("default", "linear", "llama3", "longrope")


@attrs.frozen
class RopeConfig:
    theta: float = 10000.0
    kind: str = "default"  # one of KINDS
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    # longrope: per-frequency divisors for positions within the original context (short) and
    # beyond it (long), and the factor cos and sin are scaled by.
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0

    def inverse_frequencies(
        self, head_dim: int, long: bool = False
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """HF's inv_freq, including the llama3 frequency-dependent rescaling and longrope's
        divisors (its ``long`` set for sequences beyond the original context)."""
        inv = 1.0 / (self.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        if self.kind == "longrope":
            factors = np.asarray(self.long_factor if long else self.short_factor, np.float64)
            return inv / factors
        if self.kind == "linear":
            return inv / self.factor
        if self.kind != "llama3":
            return inv
        low_wavelen = self.original_max_position / self.low_freq_factor
        high_wavelen = self.original_max_position / self.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
        smooth = (self.original_max_position / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled)


def read_rope(
    params: Mapping[str, Any], raw: Mapping[str, Any], head_dim: int, source: str
) -> RopeConfig:
    """One rope from its parameters (``rope_parameters`` or ``rope_scaling``, merged) and the
    top-level fields older configs keep beside them."""
    kind = params.get("rope_type", params.get("type", "default"))
    where = f"{source} rope_type"
    if kind not in KINDS:
        raise ValidationError(where, f"{kind!r} is not supported; expected one of {KINDS}")
    partial = float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
    if partial != 1.0:
        raise ValidationError(
            f"{source} partial_rotary_factor",
            f"{partial:g} is not supported: galley rotates whole heads (1.0)",
        )
    original = int(
        params.get(
            "original_max_position_embeddings",
            raw.get("original_max_position_embeddings", 8192),
        )
    )
    short, long = tuple(params.get("short_factor") or ()), tuple(params.get("long_factor") or ())
    attention_factor = 1.0
    if kind == "longrope":
        if len(short) != head_dim // 2 or len(long) != head_dim // 2:
            raise ValidationError(
                f"{source} rope_scaling",
                f"longrope needs short_factor and long_factor of {head_dim // 2} values each "
                f"(half the head dimension), got {len(short)} and {len(long)}",
            )
        # As HF: the context's growth over the original sets the factor cos and sin scale by.
        growth = float(params.get("factor") or raw["max_position_embeddings"] / original)
        default = math.sqrt(1 + math.log(growth) / math.log(original)) if growth > 1 else 1.0
        attention_factor = float(params.get("attention_factor") or default)
    return RopeConfig(
        theta=float(params.get("rope_theta", raw.get("rope_theta", 10000.0))),
        kind=kind,
        factor=float(params.get("factor") or 1.0),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=original,
        short_factor=tuple(float(f) for f in short),
        long_factor=tuple(float(f) for f in long),
        attention_factor=attention_factor,
    )


def read_ropes(
    raw: Mapping[str, Any], head_dim: int, source: str
) -> tuple[RopeConfig, RopeConfig | None]:
    """The rope of full-attention layers, and that of sliding-window layers where the config
    gives them their own (Gemma 3: ``rope_parameters`` per layer kind in new configs,
    ``rope_local_base_freq`` in old ones)."""
    # transformers >= 5 writes rope_parameters; older versions rope_theta + rope_scaling.
    params = dict(raw.get("rope_parameters") or {})
    if "full_attention" in params:  # one set per layer kind
        local = params.get("sliding_attention")
        return (
            read_rope(params["full_attention"], raw, head_dim, source),
            read_rope(local, raw, head_dim, source) if local else None,
        )
    merged = {**dict(raw.get("rope_scaling") or {}), **params}
    local_base = raw.get("rope_local_base_freq")
    local_rope = RopeConfig(theta=float(local_base)) if local_base is not None else None
    return read_rope(merged, raw, head_dim, source), local_rope


def frequency_table(rope: RopeConfig, head_dim: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """[2, D/2]: the inverse frequencies for positions within the original context, then
    those beyond it (the same row twice but for longrope)."""
    rows = [rope.inverse_frequencies(head_dim), rope.inverse_frequencies(head_dim, long=True)]
    return np.stack(rows).astype(np.float32)


def long_context(rope: RopeConfig, positions: Array, segments: Array | None) -> Array | None:
    """Where longrope uses its long set ([B, T] bool), None for other ropes. HF picks it for
    a whole call once any position is beyond the original context; galley picks it per
    sequence, by the sequence's own length, so that a datum's log-probabilities never depend
    on what it was batched with. Rows with ``segments`` ([B, T], -1 padding) hold whole
    sequences; a row without (sampling) is one sequence, as long as its last position."""
    if rope.kind != "longrope":
        return None
    if segments is None:
        beyond = jnp.max(positions, axis=1, keepdims=True) + 1 > rope.original_max_position
        return jnp.broadcast_to(beyond, positions.shape)
    b, t = positions.shape
    ids = (jnp.arange(b)[:, None] * (t + 1) + segments + 1).reshape(-1)
    ends = jax.ops.segment_max(positions.reshape(-1), ids, num_segments=b * (t + 1))
    return (ends[ids] + 1 > rope.original_max_position).reshape(b, t)


def cos_sin(
    rope: RopeConfig, table: Array, positions: Array, dtype: Any, long: Array | None = None
) -> tuple[Array, Array]:
    """cos and sin [B, T, D] at ``positions`` [B, T] from ``frequency_table``'s rows: its
    long set where ``long`` ([B, T], from ``long_context``) says."""
    inv = table[0]
    if long is not None:
        inv = jnp.where(long[..., None], table[1], table[0])
    freqs = positions[..., None].astype(jnp.float32) * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    if rope.attention_factor != 1.0:
        cos, sin = cos * rope.attention_factor, sin * rope.attention_factor
    return cos.astype(dtype), sin.astype(dtype)


def rotate_half(x: Array) -> Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x: [B, T, heads, D]; cos/sin: [B, T, D]."""
    return x * cos[:, :, None, :] + rotate_half(x) * sin[:, :, None, :]
