"""Decoders of the Llama lineage (Llama 2/3, Mistral, Qwen2/3, Gemma 2/3, Phi-3, and the
mixtures of experts Qwen2/3-MoE and Mixtral) as Flax NNX modules with LoRA; what sets each
family apart is data (``families``, ``ModelConfig``). ``build.py`` builds them.

Linear kernels are stored ``[in, out]`` (HF stores ``[out, in]``), except in models built in
the sampling layout (``build_model(..., sampling_layout=True)``, no LoRA): decoding reads every
weight once per token for a few rows, so there kernels keep HF's ``[out, in]``, q/k/v and
gate/up are stacked into one kernel each at load, and few-row products run as broadcast
multiply-and-sum (``times_transposed``). LoRA adds ``x @ A @ B *
alpha / rank`` with ``A`` seeded and ``B = 0``, as PEFT does, so a fresh adapter changes
nothing. ``LoRAParam`` marks what trains in a LoRA session; in a full fine-tune every
``Param`` trains.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from galley.adapters.jax.config import ModelConfig
from galley.adapters.jax.layers import DecoderLayer, Inputs, KVCache, RMSNorm
from galley.adapters.jax.linear import Linear, times_transposed
from galley.adapters.jax.moe import RouterStats
from galley.adapters.jax.rope import cos_sin, frequency_table, long_context
from galley.core.domain.types import LoraConfig
from galley.core.errors import ConfigError, ValidationError

Array = jax.Array
ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")


class Remat(StrEnum):
    """What a decoder layer keeps for the backward (``jax.checkpoint`` policies): everything
    (``none``), only its input (``full``: the backward runs the layer's forward again), or its
    input and the results of its weight matmuls (``dots``: attention and activations are
    recomputed, the projections are not)."""

    NONE = "none"
    FULL = "full"
    DOTS = "dots"


def checked_remat(remat: Remat | str, where: str) -> Remat:
    if remat not in tuple(Remat):
        raise ConfigError(f"{where}: {remat!r} is not one of {', '.join(Remat)}")
    return Remat(remat)


REMAT_POLICIES: dict[Remat, Callable[..., Any]] = {
    Remat.FULL: jax.checkpoint_policies.nothing_saveable,
    Remat.DOTS: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# The residual stream and the router stats of the layers so far (mixtures of experts).
LayersCarry = tuple[Array, RouterStats | None]


class CausalLM(nnx.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        embed: Array,
        layers: list[DecoderLayer],
        norm: RMSNorm,
        lm_head: Linear | None,
        sampling_layout: bool = False,
    ) -> None:
        self.cfg = cfg
        self.sampling_layout = sampling_layout
        self.embed_tokens = nnx.Param(embed)
        self.layers = nnx.List(layers)
        # One layer whose weights hold every layer's, stacked: the forward scans over them
        # (``scan.stack_layers``), so the program is one layer's, whatever the depth.
        self.scanned = False
        self.remat = Remat.NONE  # set by a training session: see ``Remat``
        self.norm = norm
        self.lm_head = lm_head  # None: tied to the embedding
        self.inv_freq = nnx.Variable(jnp.asarray(frequency_table(cfg.rope, cfg.head_dim)))
        local = cfg.rope_local
        self.local_inv_freq = (
            nnx.Variable(jnp.asarray(frequency_table(local, cfg.head_dim))) if local else None
        )

    def __call__(
        self,
        tokens: Array,
        positions: Array,
        mask: Array | None = None,
        caches: list[KVCache] | None = None,
        index: Array | None = None,
        last_only: bool = False,
    ) -> tuple[Array, list[KVCache] | None]:
        """Logits [B, T, V] for ``tokens`` at ``positions`` ([B, 1, V] for the last position
        only with ``last_only``: sampling a prompt needs no more, and the head is 15% of its
        FLOPs); ``mask[b, q, k]`` says which keys each query sees (None: causal over
        ``tokens``, the fast training path). With ``caches``, keys/values are written at
        ``index`` and attended in full (the mask then spans the cache)."""
        if self.scanned:
            raise ValidationError("CausalLM", "a scanned model runs only `features` (training)")
        b, t = tokens.shape
        x, inputs = self._embed(tokens, positions, None)
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, cache, _ = layer(x, inputs, mask, None if caches is None else caches[i], index)
            if cache is not None:
                new_caches.append(cache)
        if last_only:
            x, t = x.reshape(b, t, -1)[:, -1], 1
        logits = self.unembed(self.norm(x)).reshape(b, t, -1)
        return logits, (new_caches if caches is not None else None)

    def features(
        self, tokens: Array, positions: Array, segments: Array | None
    ) -> tuple[Array, RouterStats | None]:
        """The training forward up to the head: the final norm's output [B·T, hidden], each
        position attending causally within its segment (and to segment 0) where ``segments``
        are given; and, for a mixture of experts, its routers' stats summed over layers.
        Each layer keeps for the backward what ``self.remat`` says."""
        x, inputs = self._embed(tokens, positions, segments)

        def one_layer(x: Array, layer: DecoderLayer) -> tuple[Array, RouterStats | None]:
            x, _, stats = layer(x, inputs, None, None, None)
            return x, stats

        x, stats = self._layers_forward(x, one_layer)
        return self.norm(x), stats

    def _layers_forward(
        self, x: Array, one_layer: Callable[[Array, Any], tuple[Array, RouterStats | None]]
    ) -> tuple[Array, RouterStats | None]:
        """``one_layer`` over every layer, scanned over stacked weights or unrolled, each
        under ``jax.checkpoint`` with the remat policy when there is one; the layers'
        router stats summed."""

        def apply(carry: LayersCarry, graph: Any, weights: Any) -> LayersCarry:
            x, total = carry
            x, stats = one_layer(x, nnx.merge(graph, weights))
            if stats is None:
                return x, total
            return x, stats if total is None else total + stats

        if self.remat is not Remat.NONE:
            apply = jax.checkpoint(apply, policy=REMAT_POLICIES[self.remat], static_argnums=(1,))
        moe = self.cfg.moe
        carry: LayersCarry = (x, RouterStats.zeros(moe.num_experts) if moe is not None else None)
        if self.scanned:
            graph, stacked = nnx.split(self.layers[0])
            return jax.lax.scan(lambda c, w: (apply(c, graph, w), None), carry, stacked)[0]
        for layer in self.layers:
            carry = apply(carry, *nnx.split(layer))
        return carry

    def _embed(
        self, tokens: Array, positions: Array, segments: Array | None
    ) -> tuple[Array, Inputs]:
        """The tokens' embeddings [B·T, hidden] (Gemma scales them by sqrt(hidden), rounded
        to their dtype as HF does) and what the layers read."""
        b, t = tokens.shape
        x = jnp.take(self.embed_tokens[...], tokens.reshape(b * t), axis=0)
        if self.cfg.family.scaled_embeddings:
            x = x * jnp.asarray(self.cfg.hidden_size**0.5, x.dtype)
        local = self.cfg.rope_local
        long = long_context(self.cfg.rope, positions, segments)
        return x, Inputs(
            positions,
            cos_sin(self.cfg.rope, self.inv_freq[...], positions, x.dtype, long),
            None
            if local is None or self.local_inv_freq is None
            else cos_sin(local, self.local_inv_freq[...], positions, x.dtype),
            segments,
        )

    def unembed(self, x: Array) -> Array:
        """float32 logits [rows, vocab] of normed features [rows, hidden], soft-capped where
        the model caps them (Gemma 2)."""
        if self.lm_head is not None:
            logits = self.lm_head(x)
        elif self.sampling_layout:  # the embedding is [vocab, hidden]: an [out, in] kernel
            logits = times_transposed(x, self.embed_tokens[...])
        else:
            logits = x @ self.embed_tokens[...].T
        logits = logits.astype(jnp.float32)
        cap = self.cfg.final_softcap
        return logits if cap is None else jnp.tanh(logits / cap) * cap


def check_lora_rank(lora: LoraConfig, cfg: ModelConfig) -> None:
    """Refuse a rank above the smallest dimension of a projection LoRA adapts: the factors
    of such an update cannot have that rank."""
    d = cfg.head_dim
    dims: dict[str, int] = {}
    if lora.train_attn:
        dims["attention"] = min(cfg.hidden_size, cfg.num_kv_heads * d, cfg.num_heads * d)
    if lora.train_mlp:
        dims["MLP"] = min(cfg.hidden_size, cfg.intermediate_size)
    if lora.train_unembed:
        dims["unembedding"] = min(cfg.hidden_size, cfg.vocab_size)
    if dims and lora.rank > min(dims.values()):
        which = min(dims, key=lambda k: dims[k])
        raise ValidationError(
            "LoraConfig.rank",
            f"{lora.rank} is above {dims[which]}, the smallest dimension of the {which} "
            "projections it adapts; give a rank up to that (or 0 for full fine-tuning)",
        )


def check_target_names(lora: LoraConfig) -> None:
    if lora.rank and not (lora.train_attn or lora.train_mlp or lora.train_unembed):
        raise ValidationError(
            "LoraConfig", "rank > 0 but no target (attention, MLP, unembedding) is trained"
        )
