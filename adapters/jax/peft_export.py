"""Exports in the formats users load elsewhere: a PEFT LoRA adapter, or merged HF weights."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import save as save_safetensors

from galley.adapters.jax.model import CausalLM, Linear, RMSNorm
from galley.core.types import SessionConfig


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
            tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(np.asarray(node.lora_a[...]).T)
            tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(np.asarray(node.lora_b[...]).T)
            targets.add(str(path[-1]))
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


def merged_hf_tensors(model: CausalLM) -> dict[str, np.ndarray[Any, Any]]:
    """Every weight under its HF name (the family's table), LoRA folded in (W + A B alpha/r),
    PyTorch layout."""
    names = model.cfg.family.names
    tensors = {names.weight("embed_tokens"): np.asarray(model.embed_tokens[...])}
    for path, node in _modules(model):
        name = names.module(path)
        if isinstance(node, RMSNorm):
            tensors[f"{name}.weight"] = np.asarray(node.weight[...])
            continue
        kernel = np.asarray(node.kernel[...])
        if node.lora_a is not None and node.lora_b is not None:
            delta = np.asarray(node.lora_a[...]) @ np.asarray(node.lora_b[...]) * node.lora_scale
            kernel = (kernel + delta).astype(kernel.dtype)  # float32 adapters, base dtype kept
        tensors[f"{name}.weight"] = np.ascontiguousarray(kernel.T)
        if node.bias is not None:
            tensors[f"{name}.bias"] = np.asarray(node.bias[...])
    return tensors
