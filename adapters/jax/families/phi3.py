"""Phi-3 and Phi-3.5-mini: Llama's layer with q/k/v fused into one projection (qkv_proj) and
gate/up into another (gate_up_proj), as galley's stacked projections hold them (each trains
one LoRA, as PEFT adapts them); LongRoPE where the config asks for it (``rope.py``)."""

from galley.adapters.jax.families import LAYER_MODULES, LLAMA_SHARDING, Family, HFNames

FUSED = {"self_attn.q_proj": "self_attn.qkv_proj", "mlp.gate_proj": "mlp.gate_up_proj"}

FAMILIES = (
    Family(
        "phi3",
        ("phi3",),
        qkv_bias=lambda config: False,
        fused_projections=True,
        names=HFNames(in_layer=tuple((m, FUSED.get(m, m)) for m in LAYER_MODULES)),
        sharding=LLAMA_SHARDING,
    ),
)
