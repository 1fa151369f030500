"""Gemma 2 and Gemma 3 (text): sliding-window layers between global ones (every other layer
in Gemma 2, five of each six in Gemma 3, which also gives them their own RoPE base), RMSNorm
scaling by (1 + weight), embeddings scaled by sqrt(hidden), norms after attention and after
the MLP as well as before, GeGLU, and (Gemma 2) soft-capped attention scores and logits.
Gemma 3 adds Qwen3's per-head norms of queries and keys. The config switches read from
config.json (``query_pre_attn_scalar``, the soft-caps, ``layer_types``) are model-wide."""

from collections.abc import Mapping
from typing import Any

from galley.adapters.jax.families import FULL, LLAMA_SHARDING, SLIDING, Family


def alternating(config: Mapping[str, Any], layers: int) -> tuple[str, ...]:
    """Gemma 2: layers 0, 2, 4... slide."""
    return tuple(SLIDING if (i + 1) % 2 else FULL for i in range(layers))


def one_global_in(config: Mapping[str, Any], layers: int) -> tuple[str, ...]:
    """Gemma 3: every ``sliding_window_pattern``-th layer (6 by default) is global."""
    pattern = int(config.get("sliding_window_pattern", 6))
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(layers))


def _gemma(name: str, model_types: tuple[str, ...], **traits: Any) -> Family:
    return Family(
        name,
        model_types,
        qkv_bias=lambda config: bool(config.get("attention_bias", False)),
        norm_offset=1.0,
        scaled_embeddings=True,
        sandwich_norms=True,
        sharding=LLAMA_SHARDING,
        **traits,
    )


FAMILIES = (
    _gemma("gemma2", ("gemma2",), layer_types=alternating),
    _gemma("gemma3", ("gemma3_text",), layer_types=one_global_in, qk_norm=True),
)
