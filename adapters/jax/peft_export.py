"""Exports in the formats users load elsewhere: a PEFT LoRA adapter, or merged HF weights."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from galley.adapters.jax.config import ModelConfig, expected_shapes
from galley.adapters.jax.families import HFNames
from galley.adapters.jax.layers import RMSNorm
from galley.adapters.jax.linear import Linear
from galley.adapters.jax.model import CausalLM
from galley.adapters.jax.moe import Experts
from galley.adapters.jax.sharding import to_host
from galley.core.domain.types import SessionConfig
from galley.core.errors import ValidationError


def _modules(model: CausalLM) -> list[tuple[tuple[Any, ...], Any]]:
    return [
        (tuple(path), node)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, Linear | RMSNorm)
    ]


# The parameters of a stacked-experts module that galley's two expert kernels are, by kind.
EXPERT_PARAMETERS = {"gate_up": "gate_up_proj", "down": "down_proj"}


def _expert_module(experts: str, kind: str) -> str:
    """PEFT's name for the module whose factors adapt the experts' ``kind`` kernels: it wraps
    a stacked-experts module once per parameter, the first listed in ``target_parameters``
    innermost (under ``base_layer``)."""
    return f"{experts}.base_layer" if kind == "gate_up" else experts


def _to_peft(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> tuple[Any, Any]:
    """Stacked factors [E, in, r], [E, r, out] as PEFT's ``lora_A`` [E·r, in], expert-major,
    and ``lora_B`` [out, r·E], expert-minor."""
    experts, fan_in, rank = a.shape
    return (
        a.transpose(0, 2, 1).reshape(experts * rank, fan_in),
        b.transpose(2, 1, 0).reshape(b.shape[2], rank * experts),
    )


def _from_peft(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], rank: int) -> tuple[Any, Any]:
    """``_to_peft`` undone."""
    experts = a.shape[0] // rank
    return (
        a.reshape(experts, rank, -1).transpose(0, 2, 1),
        b.reshape(-1, rank, experts).transpose(2, 1, 0),
    )


def _per_expert(names: HFNames, layer: int, kind: str, kernels: Any) -> dict[str, Any]:
    """Stacked [E, out, in] kernels (or deltas) of ``kind`` as each expert's, under the
    checkpoint's names: ``gate_up`` splits into gate's rows, then up's."""
    gate, up, down = names.expert_parts
    if kind == "down":
        return {names.expert(layer, e, down): k for e, k in enumerate(kernels)}
    width = kernels.shape[1] // 2
    out = {}
    for e, k in enumerate(kernels):
        out[names.expert(layer, e, gate)], out[names.expert(layer, e, up)] = k[:width], k[width:]
    return out


def _experts(model: CausalLM) -> list[tuple[int, str, Experts]]:
    """Each layer's experts: its index, the name PEFT gives their module, the module."""
    names = model.cfg.family.names
    return [
        (
            int(str(path[1])),
            f"base_model.model.{names.layers}.{path[1]}.{names.stacked_experts}",
            node,
        )
        for path, node in nnx.iter_graph(model)
        if isinstance(node, Experts)
    ]


def _expert_factors(experts: Experts) -> dict[str, tuple[Any, Any]]:
    return {
        kind: (getattr(experts, f"{kind}_lora_a"), getattr(experts, f"{kind}_lora_b"))
        for kind in EXPERT_PARAMETERS
    }


def _target(model: CausalLM, path: tuple[Any, ...]) -> str:
    """The module's name in ``target_modules``: its last part in the checkpoint (``qkv_proj``
    in Phi-3); with experts, its path within the layer (``mlp.shared_expert.down_proj``),
    since PEFT reads a bare ``down_proj`` as the stacked experts' parameter too."""
    name = model.cfg.family.names.module(path)
    if model.cfg.moe is not None and path[0] == "layers":
        return name.removeprefix(f"{model.cfg.family.names.layers}.{path[1]}.")
    return name.rsplit(".", 1)[-1]


def peft_adapter_files(model: CausalLM, config: SessionConfig) -> dict[str, bytes]:
    """``adapter_config.json`` + ``adapter_model.safetensors`` as PEFT writes them. Experts'
    factors are PEFT's for stacked experts: ``lora_A`` [experts·rank, in], expert-major;
    ``lora_B`` [out, rank·experts], expert-minor."""
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    targets = set()
    for path, node in _modules(model):
        if isinstance(node, Linear) and node.lora_a is not None and node.lora_b is not None:
            name = f"base_model.model.{model.cfg.family.names.module(path)}"
            tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(to_host(node.lora_a[...]).T)
            tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(to_host(node.lora_b[...]).T)
            targets.add(_target(model, path))
    parameters = []
    for _, name, experts in _experts(model):
        for kind, (a, b) in _expert_factors(experts).items():
            if a is None or b is None:
                continue
            peft_a, peft_b = _to_peft(to_host(a[...]), to_host(b[...]))
            where = _expert_module(name, kind)
            tensors[f"{where}.lora_A.weight"] = np.ascontiguousarray(peft_a)
            tensors[f"{where}.lora_B.weight"] = np.ascontiguousarray(peft_b)
            parameters.append(f"{model.cfg.family.names.stacked_experts}.{EXPERT_PARAMETERS[kind]}")
    lora = config.lora
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": config.base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": sorted(targets),
        "use_rslora": False,
    }
    if parameters:  # in EXPERT_PARAMETERS' order: PEFT nests them in this order
        adapter_config["target_parameters"] = list(dict.fromkeys(parameters))
    return {
        "adapter_config.json": json.dumps(adapter_config, indent=2).encode(),
        "adapter_model.safetensors": save_safetensors(tensors),
    }


def merged_weights(model: CausalLM) -> dict[str, jax.Array]:
    """Every weight under its HF name (the family's table), LoRA folded in (W + A B alpha/r),
    PyTorch layout, where the model's weights are: no host copy, and weights without a LoRA
    are the model's own arrays."""
    names = model.cfg.family.names
    tensors = {names.weight("embed_tokens"): model.embed_tokens[...]}
    for path, node in _modules(model):
        name = names.module(path)
        if isinstance(node, RMSNorm):
            tensors[f"{name}.weight"] = node.weight[...]
            continue
        kernel = node.kernel[...]
        if node.lora_a is not None and node.lora_b is not None:
            delta = (node.lora_a[...] @ node.lora_b[...]) * node.lora_scale
            kernel = (kernel + delta).astype(kernel.dtype)  # float32 adapters, base dtype kept
        tensors[f"{name}.weight"] = kernel.T
        if node.bias is not None:
            tensors[f"{name}.bias"] = node.bias[...]
    for layer, _, experts in _experts(model):
        for kind, (a, b) in _expert_factors(experts).items():
            kernel = getattr(experts, kind)[...]  # [E, in, out]
            if a is not None and b is not None:
                delta = jnp.einsum("eir,ero->eio", a[...], b[...]) * experts.lora_scale
                kernel = (kernel + delta).astype(kernel.dtype)
            tensors |= _per_expert(names, layer, kind, kernel.transpose(0, 2, 1))
    return tensors


def merged_hf_tensors(model: CausalLM) -> dict[str, np.ndarray[Any, Any]]:
    """``merged_weights`` on the host, contiguous: what an export writes."""
    return {k: np.ascontiguousarray(to_host(v)) for k, v in merged_weights(model).items()}


def load_peft_adapter(
    model: CausalLM, files: Mapping[str, bytes], config: SessionConfig, key: str
) -> None:
    """Set the model's LoRA weights from a PEFT adapter (``adapter_model.safetensors`` as
    ``peft_adapter_files`` writes it). Refused, naming both, when its rank, alpha or modules
    are not the session's."""
    adapter_config = json.loads(files["adapter_config.json"])
    lora = config.lora
    theirs = (int(adapter_config["r"]), float(adapter_config["lora_alpha"]))
    if theirs != (lora.rank, float(lora.alpha)):
        raise ValidationError(
            "load_weights",
            f"adapter {key!r} has LoRA rank {theirs[0]}, alpha {theirs[1]:g}; this session "
            f"has rank {lora.rank}, alpha {float(lora.alpha):g}",
        )
    tensors = load_safetensors(files["adapter_model.safetensors"])
    wanted: dict[str, tuple[Any, Any]] = {
        f"base_model.model.{model.cfg.family.names.module(path)}": (node.lora_a, node.lora_b)
        for path, node in _modules(model)
        if isinstance(node, Linear) and node.lora_a is not None and node.lora_b is not None
    }
    stacked: dict[str, tuple[Any, Any]] = {}
    for _, name, experts in _experts(model):
        for kind, (a, b) in _expert_factors(experts).items():
            if a is not None and b is not None:
                stacked[_expert_module(name, kind)] = (a, b)
    wanted |= stacked
    given = {n.removesuffix(".lora_A.weight") for n in tensors if n.endswith(".lora_A.weight")}
    if given != set(wanted):
        missing, extra = sorted(set(wanted) - given), sorted(given - set(wanted))
        raise ValidationError(
            "load_weights",
            f"adapter {key!r} adapts other modules than this session: it lacks {missing[:3]} "
            f"and has {extra[:3]} (train_attn/train_mlp/train_unembed differ?)",
        )
    for name, (lora_a, lora_b) in wanted.items():
        a, b = tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"]
        a, b = _from_peft(a, b, lora.rank) if name in stacked else (a.T, b.T)
        if a.shape != lora_a[...].shape or b.shape != lora_b[...].shape:
            raise ValidationError(
                "load_weights", f"adapter {key!r}: {name} has shapes {a.shape}, {b.shape}"
            )
        lora_a[...] = a.astype(lora_a[...].dtype)
        lora_b[...] = b.astype(lora_b[...].dtype)


def peft_deltas(cfg: ModelConfig, files: Mapping[str, bytes]) -> dict[str, np.ndarray[Any, Any]]:
    """A PEFT adapter as what it adds to each base weight (B A alpha/r), by the checkpoint's
    tensor names: stacked experts' factors become each expert's gate, up and down deltas. An
    adapter of a module the model does not have is refused by name, never dropped."""
    adapter_config = json.loads(files["adapter_config.json"])
    scale = float(adapter_config["lora_alpha"]) / float(adapter_config["r"])
    lora = load_safetensors(files["adapter_model.safetensors"])
    names, known = cfg.family.names, expected_shapes(cfg)
    deltas: dict[str, np.ndarray[Any, Any]] = {}
    for key, a in lora.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = lora[key.replace("lora_A", "lora_B")]
        experts = _stacked_experts(module, names)
        if experts is None:
            deltas[f"{module}.weight"] = (b @ a) * scale
        else:
            layer, kind = experts
            a3, b3 = _from_peft(a, b, int(adapter_config["r"]))
            delta = np.einsum("eir,ero->eoi", a3, b3) * scale
            deltas |= _per_expert(names, layer, kind, delta)
    unknown = sorted(set(deltas) - set(known))
    if unknown:
        raise ValidationError(
            "adapter_model.safetensors",
            f"adapts {unknown[:3]}, which this {cfg.model_type} model does not have",
        )
    return deltas


def _stacked_experts(module: str, names: HFNames) -> tuple[int, str] | None:
    """(layer, kind) where ``module`` is PEFT's name for a layer's stacked experts
    (``_expert_module``), else None."""
    layer, _, inner = module.removeprefix(f"{names.layers}.").partition(".")
    for kind in EXPERT_PARAMETERS:
        if layer.isdigit() and inner == _expert_module(names.stacked_experts, kind):
            return int(layer), kind
    return None
