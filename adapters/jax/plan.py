"""How much device memory a training step takes, per device, before anything loads.

Weights, optimizer state, gradients and the batch are counted exactly: the model is built
abstractly (``nnx.eval_shape``: shapes, no arrays) from its config.json, and each array is
divided as the family's sharding rules split it on the mesh. Activations, what the step
keeps for its backward, are an estimate from the model's shapes (``activation_bytes``);
``tests/test_jax_plan.py`` holds the whole within 20% of XLA's own memory analysis of the
compiled step on CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from galley.adapters.jax.attention import chunk_size
from galley.adapters.jax.batching import PADDED_DTYPES
from galley.adapters.jax.config import ModelConfig, expected_shapes
from galley.adapters.jax.mesh import MeshShape
from galley.adapters.jax.model import build_model
from galley.adapters.jax.sharding import BATCH_AXES, param_name, split_axes, split_count
from galley.core.domain.types import LoraConfig

GIB = 1 << 30


@attrs.frozen
class MemoryPlan:
    """Bytes per device of one training step (``forward_backward`` then ``optim_step``)."""

    mesh: Mapping[str, int]
    frozen_weights: int  # the base a LoRA does not train (nothing in full fine-tuning)
    trainable_weights: int
    optimizer_state: int  # AdamW's two moments (and its step count)
    gradients: int  # the accumulator ``forward_backward`` adds into
    batch: int
    activations: int  # estimated: what the forward keeps for the backward, at its peak

    @property
    def total(self) -> int:
        return (
            self.frozen_weights
            + self.trainable_weights
            + self.optimizer_state
            + self.gradients
            + self.batch
            + self.activations
        )

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("frozen weights", self.frozen_weights),
            ("trainable weights", self.trainable_weights),
            ("optimizer state", self.optimizer_state),
            ("gradients", self.gradients),
            ("batch", self.batch),
            ("activations (estimate)", self.activations),
            ("total", self.total),
        ]


def plan_memory(
    cfg: ModelConfig,
    lora: LoraConfig | None,
    *,
    dtype: Any,
    mesh: MeshShape,
    devices: int,
    rows: int,
    length: int,
) -> MemoryPlan:
    """The plan for ``rows`` sequences of ``length`` tokens (padded as the adapter pads them)
    on ``devices`` devices split as ``mesh``; ``lora`` None or rank 0 is full fine-tuning."""
    sizes = dict(zip(("data", "fsdp", "tensor"), mesh.sizes(devices), strict=True))
    shapes = expected_shapes(cfg)
    lora = lora if lora is not None and lora.rank else None

    def build() -> Any:
        return build_model(cfg, lambda name: jnp.zeros(shapes[name]), lora, dtype)

    model = nnx.eval_shape(build)
    trainable_filter = nnx.LoRAParam if lora is not None else nnx.Param
    parts: tuple[Any, ...] = nnx.split(model, trainable_filter, ...)
    trainable, frozen = parts[1], parts[2]
    from galley.adapters.jax.steps import adamw  # the optimizer the sessions use

    optimizer = jax.eval_shape(adamw().init, trainable)
    rules = cfg.family.sharding

    def per_device(tree: Any) -> int:
        total = 0
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            shape = tuple(np.shape(leaf))
            axes = split_axes(param_name(path), shape, rules, sizes)
            parts = int(np.prod([split_count(a, sizes) for a in axes]))
            total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize // parts
        return total

    split_rows = int(np.prod([sizes[a] for a in BATCH_AXES]))
    local_rows = -(-rows // split_rows)
    batch = sum(local_rows * length * np.dtype(t).itemsize for t in PADDED_DTYPES.values())
    return MemoryPlan(
        mesh=sizes,
        frozen_weights=per_device(frozen),
        trainable_weights=per_device(trainable),
        optimizer_state=per_device(optimizer),
        gradients=per_device(trainable),
        batch=batch,
        activations=activation_bytes(
            cfg, local_rows, length, np.dtype(dtype).itemsize, sizes["tensor"]
        ),
    )


def activation_bytes(cfg: ModelConfig, rows: int, length: int, width: int, tensor: int) -> int:
    """What one device's forward keeps for the backward. Per layer and token: the residual
    stream and its norms (4 x hidden), queries, keys and values before and after RoPE and
    attention's output (3 x (q + k/v widths)), the MLP's gate, up, product and their
    gradients' inputs (4 x intermediate); per layer, the attention probabilities of the
    causal query chunks and their gradient (float32); once, the logits and their
    log-softmax (float32). Tensor parallelism splits the widths and heads."""
    tokens = rows * length
    q = cfg.num_heads * cfg.head_dim // tensor
    kv = max(cfg.num_kv_heads // tensor, 1) * cfg.head_dim
    per_token = 4 * cfg.hidden_size + 3 * (q + kv) + 4 * (cfg.intermediate_size // tensor)
    size = chunk_size(length)
    visible = sum((c + 1) * size for c in range(length // size)) * size  # (query, key) pairs
    heads = max(cfg.num_heads // tensor, 1)
    attention = 2 * rows * heads * visible * 4
    logits = 2 * tokens * (cfg.vocab_size // tensor) * 4
    return cfg.num_layers * (tokens * per_token * width + attention) + logits
