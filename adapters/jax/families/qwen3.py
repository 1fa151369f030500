"""Qwen3: Llama's layout with queries and keys RMS-normalised per head (q_norm, k_norm)."""

from galley.adapters.jax.families import LLAMA_SHARDING, Family, sliding_from_max_window_layers

FAMILY = Family(
    "qwen3",
    ("qwen3",),
    qkv_bias=lambda config: bool(config.get("attention_bias", False)),
    qk_norm=True,
    layer_types=sliding_from_max_window_layers,
    sharding=LLAMA_SHARDING,
)
