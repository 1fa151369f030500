"""Decoder families: how each one's config.json names it, what sets it apart, and where an HF
checkpoint keeps its weights. Loading, the shapes checked at load, the PEFT export and the
merged export all read names from here. A new family is one new module in this package
defining ``FAMILY``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import attrs

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

    def module(self, path: ModulePath) -> str:
        """The HF module name of galley's module at ``path``."""
        first = str(path[0])
        if first == "layers":
            inner = ".".join(str(p) for p in path[2:])
            return f"{self.layers}.{path[1]}.{dict(self.in_layer)[inner]}"
        return {"embed_tokens": self.embed, "norm": self.norm, "lm_head": self.head}[first]

    def weight(self, *path: str | int, part: str = "weight") -> str:
        return f"{self.module(path)}.{part}"


@attrs.frozen
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json's model_type values it reads
    qkv_bias: Callable[[Mapping[str, Any]], bool]  # q/k/v projections carry a bias
    qk_norm: bool = False  # queries and keys are RMS-normalised per head before RoPE
    names: HFNames = attrs.field(factory=HFNames)


@cache
def families() -> Mapping[str, Family]:
    """Every family in this package, by the model_type values it reads."""
    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(__path__):
        family: Family = importlib.import_module(f"{__name__}.{info.name}").FAMILY
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
