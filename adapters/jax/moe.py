"""Mixture-of-experts MLPs (Qwen2-MoE, Qwen3-MoE, Mixtral): a router picks each token's top-k
experts, whose gated MLPs run as grouped matmuls over the tokens sorted by expert
(``jax.lax.ragged_dot``: each expert multiplies only its own tokens), and their outputs are
summed under the routing weights. Qwen2-MoE adds a shared expert every token passes through,
scaled by a sigmoid gate.

The experts' weights are stacked, ``[experts, in, out]``, with gate and up side by side in
one kernel as transformers holds them; LoRA adapts each expert's two kernels (gate-up and
down) with factors stacked the same way, which is PEFT's layout for such experts
(``target_parameters``). A layer also returns what the load-balancing loss needs
(``RouterStats``), summed over layers by the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from galley.adapters.jax.linear import Linear
from galley.core.errors import ConfigError

Array = jax.Array


@attrs.frozen
class MoEConfig:
    num_experts: int
    top_k: int
    expert_size: int  # each expert's MLP width
    normalize_top_k: bool  # routing weights renormalised over the top k (Mixtral always)
    shared_expert_size: int = 0  # Qwen2-MoE's shared expert (0: none)
    aux_loss_coef: float = 0.0  # config.json's router_aux_loss_coef


def checked_coef(coef: float, where: str) -> float:
    """The weight of the load-balancing loss in a session's loss: a number from 0 (reported,
    not added)."""
    if isinstance(coef, bool) or not isinstance(coef, int | float) or not 0 <= coef < 1e3:
        raise ConfigError(f"{where}: expected a number from 0 (0: not added), got {coef!r}")
    return float(coef)


class RouterStats(NamedTuple):
    """Per expert, summed over a layer's real tokens: how often it was picked, and its
    routing probability; and how many tokens were routed. HF's load-balancing loss is
    E · Σ_e (picks_e / tokens) · (probability_e / tokens) over every layer's tokens."""

    picks: Array  # [E]
    probability: Array  # [E]
    tokens: Array  # scalar

    def __add__(self, other: Any) -> RouterStats:
        return RouterStats(*(a + b for a, b in zip(self, other, strict=True)))

    def balance_loss(self) -> Array:
        tokens = jnp.maximum(self.tokens, 1.0)
        return jnp.sum(self.picks / tokens * self.probability / tokens) * self.picks.shape[0]

    @staticmethod
    def zeros(num_experts: int) -> RouterStats:
        return RouterStats(jnp.zeros(num_experts), jnp.zeros(num_experts), jnp.zeros(()))


class Experts(nnx.Module):
    """``num_experts`` gated MLPs: ``gate_up`` [E, hidden, 2·width], ``down`` [E, width,
    hidden], with optional LoRA factors per expert."""

    def __init__(
        self,
        gate_up: Array,
        down: Array,
        lora_rank: int,
        lora_alpha: float,
        key: Array | None,
    ) -> None:
        self.gate_up, self.down = nnx.Param(gate_up), nnx.Param(down)
        self.lora_scale = lora_alpha / lora_rank if lora_rank else 0.0
        factors: tuple[nnx.LoRAParam[Array] | None, ...] = (None,) * 4
        if lora_rank and key is not None:
            keys = jax.random.split(key)
            factors = (
                *_factors(gate_up.shape, lora_rank, keys[0]),
                *_factors(down.shape, lora_rank, keys[1]),
            )
        self.gate_up_lora_a, self.gate_up_lora_b, self.down_lora_a, self.down_lora_b = factors

    def project(self, x: Array, sizes: Array, which: str) -> Array:
        """Rows of ``x`` (sorted by expert, ``sizes[e]`` rows for expert ``e``) through each
        one's ``which`` kernel (``gate_up`` or ``down``), its LoRA added."""
        kernel = getattr(self, which)[...]
        y = jax.lax.ragged_dot(x, kernel.astype(x.dtype), sizes)
        a, b = getattr(self, f"{which}_lora_a"), getattr(self, f"{which}_lora_b")
        if a is not None and b is not None:
            low = jax.lax.ragged_dot(x, a[...].astype(x.dtype), sizes)
            y = y + jax.lax.ragged_dot(low, b[...].astype(x.dtype), sizes) * self.lora_scale
        return y


def _factors(
    shape: tuple[int, ...], rank: int, key: Array
) -> tuple[nnx.LoRAParam[Array], nnx.LoRAParam[Array]]:
    """A seeded as PEFT seeds it (uniform within 1/sqrt(fan_in)), B zero: float32 whatever
    the base dtype, as ``Linear``'s."""
    experts, fan_in, fan_out = shape
    bound = 1.0 / np.sqrt(fan_in)
    a = jax.random.uniform(key, (experts, fan_in, rank), jnp.float32, -bound, bound)
    return nnx.LoRAParam(a), nnx.LoRAParam(jnp.zeros((experts, rank, fan_out), jnp.float32))


class SparseMoE(nnx.Module):
    def __init__(
        self,
        moe: MoEConfig,
        router: Linear,
        experts: Experts,
        activation: Callable[[Array, Array], Array],
        shared: Any = None,  # the shared expert: a dense MLP (layers.py, which imports this)
        shared_gate: Linear | None = None,
    ) -> None:
        self.moe = moe
        self.router, self.experts = router, experts
        self.activation = activation  # the experts' gated activation (SwiGLU)
        self.shared_expert, self.shared_expert_gate = shared, shared_gate

    def __call__(self, x: Array, real: Array | None = None) -> tuple[Array, RouterStats]:
        """``x`` [N, hidden] → ([N, hidden], the router's stats over the rows ``real`` marks,
        every row without it)."""
        moe, (n, _) = self.moe, x.shape
        probs = jax.nn.softmax(self.router(x).astype(jnp.float32), axis=-1)
        weights, chosen = jax.lax.top_k(probs, moe.top_k)  # [N, k]
        if moe.normalize_top_k:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        # Sort the N·k (token, expert) pairs by expert: each expert's rows are contiguous.
        flat = chosen.reshape(-1)
        order = jnp.argsort(flat, stable=True)
        token = order // moe.top_k
        sizes = jnp.bincount(flat, length=moe.num_experts).astype(jnp.int32)
        gate, up = jnp.split(self.experts.project(x[token], sizes, "gate_up"), 2, axis=-1)
        y = self.experts.project(self.activation(gate, up), sizes, "down")
        y = y * weights.reshape(-1)[order][:, None].astype(y.dtype)
        out = jnp.zeros_like(x).at[token].add(y)
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            scale = jax.nn.sigmoid(self.shared_expert_gate(x))
            out = out + scale * self.shared_expert(x)
        mask = jnp.ones((n,), jnp.float32) if real is None else real.astype(jnp.float32)
        stats = RouterStats(
            jnp.zeros(moe.num_experts).at[flat].add(jnp.repeat(mask, moe.top_k)),
            jnp.sum(probs * mask[:, None], axis=0),
            jnp.sum(mask),
        )
        return out, stats
