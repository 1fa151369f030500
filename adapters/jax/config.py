"""Decoder model configs as Hugging Face checkpoints carry them (old and new ``transformers``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from galley.adapters.hf.model_files import read_json
from galley.adapters.jax.families import Family, family_of
from galley.core.errors import NotFoundError, ValidationError


@attrs.frozen
class RopeConfig:
    theta: float = 10000.0
    kind: str = "default"  # "default" | "llama3" | "linear"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    def inverse_frequencies(self, head_dim: int) -> np.ndarray[Any, np.dtype[np.float64]]:
        """HF's inv_freq, including the llama3 frequency-dependent rescaling."""
        inv = 1.0 / (self.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
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


def _rope(raw: Mapping[str, Any]) -> RopeConfig:
    # transformers >= 5 writes rope_parameters; older versions rope_theta + rope_scaling.
    params = dict(raw.get("rope_parameters") or {})
    scaling = dict(raw.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", raw.get("rope_theta", 10000.0))
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind not in ("default", "llama3", "linear"):
        raise ValidationError(
            "config.json rope_type",
            f"{kind!r} is not supported; expected default, linear or llama3",
        )
    return RopeConfig(
        theta=float(theta),
        kind=kind,
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position=int(merged.get("original_max_position_embeddings", 8192)),
    )


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
    if raw.get("head_dim") is None and hidden % heads:
        raise ValidationError(
            f"{source} hidden_size",
            f"{hidden} is not a multiple of num_attention_heads ({heads}) and head_dim is unset",
        )
    try:
        eos = raw.get("eos_token_id")
        return ModelConfig(
            family=family,
            model_type=str(model_type),
            vocab_size=_size(raw, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=_size(raw, "intermediate_size", source),
            num_layers=_size(raw, "num_hidden_layers", source),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=_size(raw, "head_dim", source, hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=_rope(raw),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=family.qkv_bias(raw),
            qk_norm=family.qk_norm,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=tuple(eos)
            if isinstance(eos, list)
            else (() if eos is None else (int(eos),)),
        )
    except KeyError as e:
        raise ValidationError(f"{source}", f"missing required field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{source}", f"a field has the wrong type: {e}") from None


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape config.json implies for every weight a checkpoint of it holds, by HF name."""
    h, d, vocab, inner = cfg.hidden_size, cfg.head_dim, cfg.vocab_size, cfg.intermediate_size
    q, kv = cfg.num_heads * d, cfg.num_kv_heads * d
    name = cfg.family.names.weight
    shapes = {
        name("embed_tokens"): (vocab, h),
        name("lm_head"): (vocab, h),
        name("norm"): (h,),
    }
    per_layer = {
        "input_layernorm": (h,),
        "post_attention_layernorm": (h,),
        "self_attn.q_proj": (q, h),
        "self_attn.k_proj": (kv, h),
        "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q),
        "self_attn.q_norm": (d,),
        "self_attn.k_norm": (d,),
        "mlp.gate_proj": (inner, h),
        "mlp.up_proj": (inner, h),
        "mlp.down_proj": (h, inner),
    }
    biases = {"self_attn.q_proj": (q,), "self_attn.k_proj": (kv,), "self_attn.v_proj": (kv,)}
    for i in range(cfg.num_layers):
        for module, shape in per_layer.items():
            shapes[name("layers", i, *module.split("."))] = shape
        for module, shape in biases.items():
            shapes[name("layers", i, *module.split("."), part="bias")] = shape
    return shapes


def read_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise NotFoundError(f"model folder {str(folder)!r} has no config.json")
    return parse_config(read_json(path), str(path))
