"""Decoder families: how each one's config.json names it, what sets it apart, and where an HF
checkpoint keeps its weights. Loading, the shapes checked at load, the PEFT export and the
merged export all read names from here. A new family is one new module in this package
defining ``FAMILY`` (or ``FAMILIES``, for kin sharing one module).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import attrs

from galley.adapters.jax.moe import MoEConfig
from galley.core.errors import ValidationError

# A module's path in galley's model: ("layers", 3, "mlp", "up_proj"), ("norm",), ("lm_head",).
ModulePath = Sequence[str | int]

# Galley's per-layer modules (also their names in the NNX model).
LAYER_MODULES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
    "mlp.router",  # mixtures of experts (moe.py): the router, the shared expert and its gate
    "mlp.shared_expert.gate_proj",
    "mlp.shared_expert.up_proj",
    "mlp.shared_expert.down_proj",
    "mlp.shared_expert_gate",
)


@attrs.frozen
class HFNames:
    """Where an HF checkpoint keeps each module of galley's model."""

    embed: str = "model.embed_tokens"
    norm: str = "model.norm"
    head: str = "lm_head"
    layers: str = "model.layers"
    # (galley's name, the checkpoint's) per layer; pairs, not a dict: a model's config is a
    # static, hashed part of its compiled steps.
    in_layer: tuple[tuple[str, str], ...] = tuple((m, m) for m in LAYER_MODULES)

    # Mixtures of experts: where the checkpoint keeps expert e's gate, up and down kernels
    # (f"{layers}.{i}.{experts}.{e}.{part}"), which galley stacks into one kernel per kind.
    experts: str = "mlp.experts"
    expert_parts: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    # ... and where transformers holds them stacked, as its ``gate_up_proj`` and
    # ``down_proj`` parameters: PEFT names adapters of experts by it.
    stacked_experts: str = "mlp.experts"

    def expert(self, layer: int, expert: int, part: str) -> str:
        return f"{self.layers}.{layer}.{self.experts}.{expert}.{part}.weight"

    def module(self, path: ModulePath) -> str:
        """The HF module name of galley's module at ``path``."""
        first = str(path[0])
        if first == "layers":
            inner = ".".join(str(p) for p in path[2:])
            return f"{self.layers}.{path[1]}.{dict(self.in_layer)[inner]}"
        return {"embed_tokens": self.embed, "norm": self.norm, "lm_head": self.head}[first]

    def weight(self, *path: str | int, part: str = "weight") -> str:
        return f"{self.module(path)}.{part}"


# How parameters split over the mesh (axes "fsdp" and "tensor"; "data" only splits batches):
# per parameter, by galley's name with kernels [in, out], the mesh axis each dimension splits
# over, None where every device holds it whole. FSDP splits each matrix along one dimension
# to spread its memory; tensor parallelism splits q/k/v and gate/up by output columns
# (attention heads, MLP width) and o/down by input rows, Megatron's pairs, so each device
# computes its heads and its slice of the MLP. A LoRA factor's wide dimension (A's input,
# B's output) splits over both of its kernel's axes (``sharding.split_axes``). Parameters
# not listed (the norms) are whole on every device. XLA's SPMD partitioner places the
# activations.
ShardingRules = tuple[tuple[str, tuple[str | None, ...]], ...]

LLAMA_SHARDING: ShardingRules = (
    ("embed_tokens", ("tensor", "fsdp")),  # [vocab, hidden]
    ("lm_head.kernel", ("fsdp", "tensor")),
    ("self_attn.q_proj.kernel", ("fsdp", "tensor")),
    ("self_attn.k_proj.kernel", ("fsdp", "tensor")),
    ("self_attn.v_proj.kernel", ("fsdp", "tensor")),
    ("self_attn.q_proj.bias", ("tensor",)),
    ("self_attn.k_proj.bias", ("tensor",)),
    ("self_attn.v_proj.bias", ("tensor",)),
    ("self_attn.o_proj.kernel", ("tensor", "fsdp")),
    ("mlp.gate_proj.kernel", ("fsdp", "tensor")),
    ("mlp.up_proj.kernel", ("fsdp", "tensor")),
    ("mlp.down_proj.kernel", ("tensor", "fsdp")),
)


FULL, SLIDING = "full_attention", "sliding_attention"  # config.json's layer_types values


def sliding_if_windowed(config: Mapping[str, Any], layers: int) -> tuple[str, ...]:
    """Every layer slides where config.json sets a ``sliding_window`` (Mistral 7B v0.1,
    Phi-3), none otherwise: the layer kinds of configs that predate ``layer_types``."""
    return ((SLIDING if config.get("sliding_window") else FULL),) * layers


def sliding_from_max_window_layers(config: Mapping[str, Any], layers: int) -> tuple[str, ...]:
    """Qwen2/Qwen3: with ``use_sliding_window``, layers from ``max_window_layers`` on slide."""
    if not config.get("use_sliding_window") or not config.get("sliding_window"):
        return (FULL,) * layers
    first = int(config.get("max_window_layers", layers))
    return tuple(SLIDING if i >= first else FULL for i in range(layers))


# Experts split over fsdp by expert (a device holds some experts whole) and over tensor by
# their MLP width, like the dense MLP's gate/up and down; the shared expert as a dense MLP.
MOE_SHARDING: ShardingRules = (
    *LLAMA_SHARDING,
    ("mlp.experts.gate_up", ("fsdp", None, "tensor")),  # [experts, hidden, 2 x width]
    ("mlp.experts.down", ("fsdp", "tensor", None)),
    ("mlp.experts.gate_up_lora_a", ("fsdp", None, None)),
    ("mlp.experts.gate_up_lora_b", ("fsdp", None, "tensor")),
    ("mlp.experts.down_lora_a", ("fsdp", "tensor", None)),
    ("mlp.experts.down_lora_b", ("fsdp", None, None)),
    ("mlp.shared_expert.gate_proj.kernel", ("fsdp", "tensor")),
    ("mlp.shared_expert.up_proj.kernel", ("fsdp", "tensor")),
    ("mlp.shared_expert.down_proj.kernel", ("tensor", "fsdp")),
)


@attrs.frozen
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json's model_type values it reads
    qkv_bias: Callable[[Mapping[str, Any]], bool]  # q/k/v projections carry a bias
    qk_norm: bool = False  # queries and keys are RMS-normalised per head before RoPE
    # Gemma: RMSNorm scales by (1 + weight); embeddings are scaled by sqrt(hidden); the
    # attention's and the MLP's outputs are normed too ("sandwich" norms).
    norm_offset: float = 0.0
    scaled_embeddings: bool = False
    sandwich_norms: bool = False
    # Phi-3: q/k/v and gate/up are each one fused projection in the checkpoint.
    fused_projections: bool = False
    # Each layer's kind (FULL or SLIDING) for a config.json without ``layer_types``.
    layer_types: Callable[[Mapping[str, Any], int], tuple[str, ...]] = sliding_if_windowed
    # Mixtures of experts: their settings from config.json (and its path, to name a key).
    experts: Callable[[Mapping[str, Any], str], MoEConfig] | None = None
    names: HFNames = attrs.field(factory=HFNames)
    sharding: ShardingRules = LLAMA_SHARDING  # how its parameters split over a mesh


@cache
def families() -> Mapping[str, Family]:
    """Every family in this package, by the model_type values it reads."""
    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for family in getattr(module, "FAMILIES", None) or (module.FAMILY,):
            found |= dict.fromkeys(family.model_types, family)
    return found


def family_of(model_type: Any, source: str = "config.json") -> Family:
    known = families()
    if model_type not in known:
        raise ValidationError(
            f"{source} model_type",
            f"{model_type!r} is not supported; expected one of {', '.join(sorted(known))}",
        )
    return known[model_type]


def read_experts(
    config: Mapping[str, Any],
    source: str,
    *,
    width: str,
    normalize: bool | None = None,
    shared: bool = False,
) -> MoEConfig:
    """A family's experts from config.json: how many (``num_experts`` or
    ``num_local_experts``), how many per token, each one's width (the ``width`` key), whether
    the top-k weights are renormalised (``normalize``, else ``norm_topk_prob``) and the shared
    expert's width. Switches galley does not run are refused by key."""
    count = config.get("num_experts", config.get("num_local_experts"))
    top_k, size = config.get("num_experts_per_tok"), config.get(width)
    for key, value in (("num_experts", count), ("num_experts_per_tok", top_k), (width, size)):
        if type(value) is not int or value < 1:
            raise ValidationError(f"{source} {key}", f"expected a positive integer, got {value!r}")
    assert isinstance(count, int) and isinstance(top_k, int) and isinstance(size, int)
    if top_k > count:
        raise ValidationError(
            f"{source} num_experts_per_tok", f"{top_k} is more than the {count} experts"
        )
    refused = {
        "mlp_only_layers": bool(config.get("mlp_only_layers")),
        "decoder_sparse_step": config.get("decoder_sparse_step", 1) != 1,
        "router_jitter_noise": bool(config.get("router_jitter_noise")),
    }
    for key, present in refused.items():
        if present:
            raise ValidationError(
                f"{source} {key}",
                f"{config[key]!r} is not supported: galley runs every layer's MLP as experts, "
                "routed without noise",
            )
    shared_size = int(config.get("shared_expert_intermediate_size") or 0) if shared else 0
    return MoEConfig(
        num_experts=count,
        top_k=top_k,
        expert_size=size,
        normalize_top_k=bool(config.get("norm_topk_prob")) if normalize is None else normalize,
        shared_expert_size=shared_size,
        aux_loss_coef=float(config.get("router_aux_loss_coef") or 0.0),
    )
