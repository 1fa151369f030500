"""Mixtures of experts: Qwen2-MoE (with a shared expert), Qwen3-MoE and Mixtral. Their
attention is their dense kin's (Qwen2's q/k/v bias, Qwen3's q/k norms, Llama's); every
layer's MLP is a routed set of experts (``moe.py``)."""

from functools import partial

from galley.adapters.jax.families import (
    LAYER_MODULES,
    MOE_SHARDING,
    Family,
    HFNames,
    read_experts,
    sliding_from_max_window_layers,
)

QWEN = HFNames(in_layer=tuple((m, "mlp.gate" if m == "mlp.router" else m) for m in LAYER_MODULES))
MIXTRAL = HFNames(
    in_layer=tuple((m, "block_sparse_moe.gate" if m == "mlp.router" else m) for m in LAYER_MODULES),
    experts="block_sparse_moe.experts",
    expert_parts=("w1", "w3", "w2"),
)

FAMILIES = (
    Family(
        "qwen2_moe",
        ("qwen2_moe",),
        qkv_bias=lambda config: bool(config.get("qkv_bias", True)),
        layer_types=sliding_from_max_window_layers,
        experts=partial(read_experts, width="moe_intermediate_size", shared=True),
        names=QWEN,
        sharding=MOE_SHARDING,
    ),
    Family(
        "qwen3_moe",
        ("qwen3_moe",),
        qkv_bias=lambda config: bool(config.get("attention_bias", False)),
        qk_norm=True,
        layer_types=sliding_from_max_window_layers,
        experts=partial(read_experts, width="moe_intermediate_size"),
        names=QWEN,
        sharding=MOE_SHARDING,
    ),
    Family(
        "mixtral",
        ("mixtral",),
        qkv_bias=lambda config: False,
        experts=partial(read_experts, width="intermediate_size", normalize=True),
        names=MIXTRAL,
        sharding=MOE_SHARDING,
    ),
)
