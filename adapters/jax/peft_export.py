"""Exports in the formats users load elsewhere: a PEFT LoRA adapter, or merged HF weights."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from galley.adapters.jax.layers import RMSNorm
from galley.adapters.jax.linear import Linear
from galley.adapters.jax.model import CausalLM
from galley.adapters.jax.sharding import to_host
from galley.core.domain.types import SessionConfig
from galley.core.errors import ValidationError


def _modules(model: CausalLM) -> list[tuple[tuple[Any, ...], Any]]:
    return [
        (tuple(path), node)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, Linear | RMSNorm)
    ]


def peft_adapter_files(model: CausalLM, config: SessionConfig) -> dict[str, bytes]:
    """``adapter_config.json`` + ``adapter_model.safetensors`` as PEFT writes them."""
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    targets = set()
    for path, node in _modules(model):
        if isinstance(node, Linear) and node.lora_a is not None and node.lora_b is not None:
            name = f"base_model.model.{model.cfg.family.names.module(path)}"
            tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(to_host(node.lora_a[...]).T)
            tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(to_host(node.lora_b[...]).T)
            targets.add(name.rsplit(".", 1)[-1])  # the checkpoint's name (qkv_proj in Phi-3)
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
    wanted = {
        f"base_model.model.{model.cfg.family.names.module(path)}": node
        for path, node in _modules(model)
        if isinstance(node, Linear) and node.lora_a is not None and node.lora_b is not None
    }
    given = {n.removesuffix(".lora_A.weight") for n in tensors if n.endswith(".lora_A.weight")}
    if given != set(wanted):
        missing, extra = sorted(set(wanted) - given), sorted(given - set(wanted))
        raise ValidationError(
            "load_weights",
            f"adapter {key!r} adapts other modules than this session: it lacks {missing[:3]} "
            f"and has {extra[:3]} (train_attn/train_mlp/train_unembed differ?)",
        )
    for name, node in wanted.items():
        a, b = tensors[f"{name}.lora_A.weight"].T, tensors[f"{name}.lora_B.weight"].T
        lora_a, lora_b = node.lora_a, node.lora_b
        assert lora_a is not None and lora_b is not None  # the modules chosen have both
        if a.shape != lora_a[...].shape or b.shape != lora_b[...].shape:
            raise ValidationError(
                "load_weights", f"adapter {key!r}: {name} has shapes {a.shape}, {b.shape}"
            )
        lora_a[...] = a.astype(lora_a[...].dtype)
        lora_b[...] = b.astype(lora_b[...].dtype)
