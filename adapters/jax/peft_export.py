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


# PEFT adapts a stacked-experts module's two parameters by wrapping it twice: the first
# listed in ``target_parameters`` innermost (its factors under ``base_layer``).
EXPERT_PARAMETERS = {"gate_up": "gate_up_proj", "down": "down_proj"}
EXPERT_PREFIXES = {"gate_up": "base_layer.", "down": ""}


def _experts(model: CausalLM) -> list[tuple[str, Experts]]:
    """Each layer's experts, by the name PEFT gives their module."""
    names = model.cfg.family.names
    return [
        (f"base_model.model.{names.layers}.{path[1]}.{names.stacked_experts}", node)
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
    for name, experts in _experts(model):
        for kind, (a, b) in _expert_factors(experts).items():
            if a is None or b is None:
                continue
            a_host, b_host = to_host(a[...]), to_host(b[...])  # [E, in, r], [E, r, out]
            where = f"{name}.{EXPERT_PREFIXES[kind]}"
            e, fan_in, r = a_host.shape
            tensors[f"{where}lora_A.weight"] = np.ascontiguousarray(
                a_host.transpose(0, 2, 1).reshape(e * r, fan_in)
            )
            tensors[f"{where}lora_B.weight"] = np.ascontiguousarray(
                b_host.transpose(2, 1, 0).reshape(b_host.shape[2], r * e)
            )
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
    for path, experts in nnx.iter_graph(model):
        if isinstance(experts, Experts):
            tensors |= _merged_experts(model, int(str(path[1])), experts)
    return tensors


def _merged_experts(model: CausalLM, layer: int, experts: Experts) -> dict[str, jax.Array]:
    """Each expert's gate, up and down kernels under the checkpoint's per-expert names."""
    names = model.cfg.family.names
    kernels = {}
    for kind, (a, b) in _expert_factors(experts).items():
        kernel = getattr(experts, kind)[...]  # [E, in, out]
        if a is not None and b is not None:
            delta = jnp.einsum("eir,ero->eio", a[...], b[...]) * experts.lora_scale
            kernel = (kernel + delta).astype(kernel.dtype)
        kernels[kind] = kernel
    gate, up, down = names.expert_parts
    width = kernels["down"].shape[1]
    out = {}
    for e in range(kernels["down"].shape[0]):
        out[names.expert(layer, e, gate)] = kernels["gate_up"][e, :, :width].T
        out[names.expert(layer, e, up)] = kernels["gate_up"][e, :, width:].T
        out[names.expert(layer, e, down)] = kernels["down"][e].T
    return out


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
    for name, experts in _experts(model):
        for kind, (a, b) in _expert_factors(experts).items():
            if a is not None and b is not None:
                stacked[f"{name}.{EXPERT_PREFIXES[kind]}".removesuffix(".")] = (a, b)
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
        a, b = tensors[f"{name}.lora_A.weight"].T, tensors[f"{name}.lora_B.weight"].T
        if name in stacked:  # PEFT's stacked-experts layout back to [E, in, r], [E, r, out]
            e, r = lora_a[...].shape[0], lora_a[...].shape[2]
            a = a.T.reshape(e, r, -1).transpose(0, 2, 1)
            b = b.T.reshape(-1, r, e).transpose(2, 1, 0)
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
        expert_kind = _stacked_experts_kind(module, names)
        if expert_kind is None:
            deltas[f"{module}.weight"] = (b @ a) * scale
        else:
            layer = int(module.removeprefix(f"{names.layers}.").split(".", 1)[0])
            rank = int(adapter_config["r"])
            deltas |= _expert_deltas(names, layer, expert_kind, (a, b), rank, scale)
    unknown = sorted(set(deltas) - set(known))
    if unknown:
        raise ValidationError(
            "adapter_model.safetensors",
            f"adapts {unknown[:3]}, which this {cfg.model_type} model does not have",
        )
    return deltas


def _stacked_experts_kind(module: str, names: HFNames) -> str | None:
    """``gate_up`` or ``down`` where ``module`` names a layer's stacked experts as PEFT does
    (``EXPERT_PREFIXES``), else None."""
    for kind, prefix in EXPERT_PREFIXES.items():
        suffix = f".{names.stacked_experts}.{prefix}".removesuffix(".")
        if module.startswith(f"{names.layers}.") and module.endswith(suffix):
            return kind
    return None


def _expert_deltas(
    names: HFNames,
    layer: int,
    kind: str,
    factors: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
    rank: int,
    scale: float,
) -> dict[str, np.ndarray[Any, Any]]:
    """PEFT's stacked factors (``lora_A`` [E·r, in] expert-major, ``lora_B`` [out, r·E]
    expert-minor) as each expert's [out, in] deltas under the checkpoint's names."""
    a, b = factors
    experts = a.shape[0] // rank
    a3 = a.reshape(experts, rank, -1)  # [E, r, in]
    b3 = b.reshape(b.shape[0], rank, experts).transpose(2, 0, 1)  # [E, out, r]
    delta = np.einsum("eor,eri->eoi", b3, a3) * scale
    gate, up, down = names.expert_parts
    if kind == "down":
        return {names.expert(layer, e, down): delta[e] for e in range(experts)}
    width = delta.shape[1] // 2  # gate's rows, then up's
    out = {}
    for e in range(experts):
        out[names.expert(layer, e, gate)] = delta[e, :width]
        out[names.expert(layer, e, up)] = delta[e, width:]
    return out
