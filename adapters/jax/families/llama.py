"""Llama 2/3 and Mistral: no q/k/v bias unless config.json asks (``attention_bias``)."""

from galley.adapters.jax.families import LLAMA_SHARDING, Family

FAMILY = Family(
    "llama",
    ("llama", "mistral"),
    qkv_bias=lambda config: bool(config.get("attention_bias", False)),
    sharding=LLAMA_SHARDING,
)
