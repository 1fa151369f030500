"""Decoder model configs as Hugging Face checkpoints carry them (old and new ``transformers``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from galley.adapters.hf.model_files import read_json
from galley.adapters.jax.families import FULL, SLIDING, Family, family_of
from galley.adapters.jax.moe import MoEConfig
from galley.adapters.jax.rope import RopeConfig, read_ropes
from galley.core.errors import NotFoundError, ValidationError

ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


@attrs.frozen
class ModelConfig:
    family: Family
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    tie_word_embeddings: bool
    qkv_bias: bool  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool  # per-head RMSNorm of queries and keys (Qwen3)
    max_position_embeddings: int
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # Per layer, the window of keys a sliding-window layer sees (itself included), or None
    # where it sees every earlier key.
    windows: tuple[int | None, ...] = ()
    rope_local: RopeConfig | None = None  # sliding-window layers' own rope (Gemma 3)
    activation: str = "silu"  # the MLP's gate: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    query_scale: float | None = None  # attention scores' scale; None: 1/sqrt(head_dim)
    attention_softcap: float | None = None  # scores become cap·tanh(score/cap) (Gemma 2)
    final_softcap: float | None = None  # the same for the logits
    moe: MoEConfig | None = None  # every layer's MLP is a mixture of experts

    @property
    def sliding(self) -> bool:
        """Some layer attends within a window."""
        return any(w is not None for w in self.windows)


def _windows(
    raw: Mapping[str, Any], family: Family, layers: int, source: str
) -> tuple[int | None, ...]:
    """Each layer's attention window from ``layer_types`` (or the family's rule for configs
    without them) and ``sliding_window``."""
    types = raw.get("layer_types") or family.layer_types(raw, layers)
    if len(types) != layers or not set(types) <= {FULL, SLIDING}:
        raise ValidationError(
            f"{source} layer_types",
            f"expected {layers} entries, each {FULL!r} or {SLIDING!r}; got {list(types)}",
        )
    if SLIDING not in types:
        return (None,) * layers
    window = raw.get("sliding_window")
    if type(window) is not int or window < 1:
        raise ValidationError(
            f"{source} sliding_window",
            f"sliding-window layers need a positive window; got {window!r}",
        )
    return tuple(window if kind == SLIDING else None for kind in types)


def _activation(raw: Mapping[str, Any], source: str) -> str:
    key = "hidden_activation" if raw.get("hidden_activation") else "hidden_act"
    name = raw.get(key, "silu")
    if name not in ACTIVATIONS:
        raise ValidationError(
            f"{source} {key}", f"{name!r} is not supported; expected one of {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def _cap(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    return float(value) if value else None


# Switches of config.json that change what a model computes and that galley does not run:
# refused by name rather than ignored.
UNSUPPORTED = {
    "use_bidirectional_attention": "galley's decoders attend causally",
    "attention_chunk_size": "chunked attention is not implemented",
}


def _size(raw: Mapping[str, Any], key: str, source: str, default: int | None = None) -> int:
    """A positive integer field of config.json (a count or a width)."""
    value = raw.get(key) if raw.get(key) is not None else default
    if value is None:
        raise ValidationError(source, f"missing required field {key!r}")
    if type(value) is not int or value < 1:
        raise ValidationError(f"{source} {key}", f"expected a positive integer, got {value!r}")
    return value


def parse_config(raw: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` from an HF ``config.json``; unsupported families, and sizes that
    no model has (zero heads, a KV head count that does not divide the heads), are refused."""
    if not isinstance(raw, Mapping):
        raise ValidationError(source, f"expected a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    family = family_of(model_type, source)
    heads = _size(raw, "num_attention_heads", source)
    hidden = _size(raw, "hidden_size", source)
    kv_heads = _size(raw, "num_key_value_heads", source, heads)
    if heads % kv_heads:
        raise ValidationError(
            f"{source} num_key_value_heads",
            f"{kv_heads} does not divide num_attention_heads ({heads})",
        )
    for key, why in UNSUPPORTED.items():
        if raw.get(key):
            raise ValidationError(f"{source} {key}", f"{raw[key]!r} is not supported: {why}")
    if raw.get("head_dim") is None and hidden % heads:
        raise ValidationError(
            f"{source} hidden_size",
            f"{hidden} is not a multiple of num_attention_heads ({heads}) and head_dim is unset",
        )
    try:
        eos = raw.get("eos_token_id")
        layers = _size(raw, "num_hidden_layers", source)
        head_dim = _size(raw, "head_dim", source, hidden // heads)
        rope, rope_local = read_ropes(raw, head_dim, source)
        scalar = raw.get("query_pre_attn_scalar")
        return ModelConfig(
            family=family,
            model_type=str(model_type),
            vocab_size=_size(raw, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=_size(raw, "intermediate_size", source),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=rope,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=family.qkv_bias(raw),
            qk_norm=family.qk_norm,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=tuple(eos)
            if isinstance(eos, list)
            else (() if eos is None else (int(eos),)),
            windows=_windows(raw, family, layers, source),
            rope_local=rope_local,
            activation=_activation(raw, source),
            query_scale=float(scalar) ** -0.5 if scalar else None,
            attention_softcap=_cap(raw, "attn_logit_softcapping"),
            final_softcap=_cap(raw, "final_logit_softcapping"),
            moe=family.experts(raw, source) if family.experts is not None else None,
        )
    except KeyError as e:
        raise ValidationError(f"{source}", f"missing required field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{source}", f"a field has the wrong type: {e}") from None


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The weight shape of each module of one layer, by galley's name (HF's [out, in])."""
    h, d, inner = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_heads * d, cfg.num_kv_heads * d
    shapes = {
        "input_layernorm": (h,),
        "post_attention_layernorm": (h,),
        "self_attn.o_proj": (h, q),
    }
    if cfg.family.fused_projections:  # q_proj stacks q, k and v; gate_proj gate and up
        shapes |= {"self_attn.q_proj": (q + 2 * kv, h)}
    else:
        shapes |= {
            "self_attn.q_proj": (q, h),
            "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h),
        }
    if cfg.moe is not None:  # each expert's kernels are named per expert: expected_shapes
        shapes["mlp.router"] = (cfg.moe.num_experts, h)
        if cfg.moe.shared_expert_size:
            shared = cfg.moe.shared_expert_size
            shapes |= {
                "mlp.shared_expert.gate_proj": (shared, h),
                "mlp.shared_expert.up_proj": (shared, h),
                "mlp.shared_expert.down_proj": (h, shared),
                "mlp.shared_expert_gate": (1, h),
            }
    elif cfg.family.fused_projections:
        shapes |= {"mlp.gate_proj": (2 * inner, h), "mlp.down_proj": (h, inner)}
    else:
        shapes |= {
            "mlp.gate_proj": (inner, h),
            "mlp.up_proj": (inner, h),
            "mlp.down_proj": (h, inner),
        }
    if cfg.qk_norm:
        shapes |= {"self_attn.q_norm": (d,), "self_attn.k_norm": (d,)}
    if cfg.family.sandwich_norms:
        shapes |= {"pre_feedforward_layernorm": (h,), "post_feedforward_layernorm": (h,)}
    return shapes


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape config.json implies for every weight a checkpoint of it holds, by HF name."""
    h, vocab = cfg.hidden_size, cfg.vocab_size
    name = cfg.family.names.weight
    shapes = {
        name("embed_tokens"): (vocab, h),
        name("lm_head"): (vocab, h),
        name("norm"): (h,),
    }
    per_layer = layer_shapes(cfg)
    for i in range(cfg.num_layers):
        for module, shape in per_layer.items():
            shapes[name("layers", i, *module.split("."))] = shape
        for module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if module in per_layer:
                bias = name("layers", i, *module.split("."), part="bias")
                shapes[bias] = per_layer[module][:1]
        if cfg.moe is not None:
            width = cfg.moe.expert_size
            gate, up, down = cfg.family.names.expert_parts
            for e in range(cfg.moe.num_experts):
                shapes[cfg.family.names.expert(i, e, gate)] = (width, h)
                shapes[cfg.family.names.expert(i, e, up)] = (width, h)
                shapes[cfg.family.names.expert(i, e, down)] = (h, width)
    return shapes


def read_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise NotFoundError(f"model folder {str(folder)!r} has no config.json")
    return parse_config(read_json(path), str(path))
