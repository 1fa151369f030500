"""Qwen2 and Qwen2.5: Llama's layout with a bias on the q/k/v projections."""

from galley.adapters.jax.families import LLAMA_SHARDING, Family, sliding_from_max_window_layers

FAMILY = Family(
    "qwen2",
    ("qwen2",),
    qkv_bias=lambda config: True,
    sharding=LLAMA_SHARDING,
    layer_types=sliding_from_max_window_layers,
)
