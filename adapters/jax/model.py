"""Llama-family decoders (Llama 2/3, Mistral, Qwen2, Qwen3) as Flax NNX modules with LoRA.

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

from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from galley.adapters.jax.attention import (
    attention,
    causal_attention,
    decode_attention,
    group_mask,
)
from galley.adapters.jax.config import ModelConfig
from galley.adapters.jax.linear import Linear, project, times_transposed
from galley.core.domain.types import LoraConfig
from galley.core.errors import ConfigError, ValidationError

Array = jax.Array
ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")


class RMSNorm(nnx.Module):
    def __init__(self, weight: Array, eps: float) -> None:
        self.weight = nnx.Param(weight)
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.weight[...] * normed).astype(x.dtype)


def rotate_half(x: Array) -> Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x: [B, T, heads, D]; cos/sin: [B, T, D]."""
    return x * cos[:, :, None, :] + rotate_half(x) * sin[:, :, None, :]


# Keys transposed, [B, kv_heads, D, S] (see ``decode_attention``); values [B, kv_heads, S, D].
KVCache = tuple[Array, Array]


def fused_attention(dtype: Any) -> Literal["cudnn", "xla"] | None:
    """The fused kernel causal training attention uses, or None for ``causal_attention``
    (written for CPUs): cuDNN's flash attention on a GPU in bf16/fp16, which never writes the
    [T, T] scores XLA's form keeps for the backward."""
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return None


class Attention(nnx.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        linears: Mapping[str, Linear],
        q_norm: RMSNorm | None,
        k_norm: RMSNorm | None,
    ) -> None:
        # In the sampling layout, q_proj stacks q, k and v, and there is no k_proj or v_proj.
        self.q_proj, self.o_proj = linears["q_proj"], linears["o_proj"]
        self.k_proj, self.v_proj = linears.get("k_proj"), linears.get("v_proj")
        self.q_norm, self.k_norm = q_norm, k_norm
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )

    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        mask: Array | None,
        cache: KVCache | None,
        index: Array | None,
        segments: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        """``x``: [B·T, hidden]; ``cos``/``sin``: [B, T, D]; ``mask``: [B, T, S], or None for
        causal attention within ``x`` (training), each position seeing only its own segment
        and segment 0 where ``segments`` ([B, T]) are given. See ``attention`` for the head
        layout."""
        b, t = cos.shape[:2]
        kv, groups, d = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
        q, k, v = project(x, [self.q_proj, self.k_proj, self.v_proj])
        q, k, v = q.reshape(b, t, self.num_heads, d), k.reshape(b, t, kv, d), v.reshape(b, t, kv, d)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        fused = fused_attention(q.dtype)
        if mask is None and cache is None and segments is None and fused is not None:  # a GPU
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=fused)
            return self.o_proj(out.reshape(b * t, self.num_heads * d)), None
        # [B, T, kv·groups, D] -> [B, kv, T·groups, D]: row t·groups + g is head kv·groups + g.
        q = q.reshape(b, t, kv, groups, d).transpose(0, 2, 1, 3, 4).reshape(b, kv, t * groups, d)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        if cache is not None and index is not None:
            keys_t = jax.lax.dynamic_update_slice(
                cache[0], k.swapaxes(2, 3).astype(cache[0].dtype), (0, 0, 0, index)
            )
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, 0, index, 0))
            cache = (keys_t, v)
            k = keys_t.swapaxes(2, 3)  # read only when t > 1 (a prompt), where it is small
        if cache is not None and mask is not None and t == 1:
            out = decode_attention(q, cache[0], v, group_mask(mask, groups))
        elif mask is None:
            out = causal_attention(q, k, v, groups, segments)
        else:
            out = attention(q, k, v, group_mask(mask, groups))
        out = out.reshape(b, kv, t, groups, d).transpose(0, 2, 1, 3, 4)
        return self.o_proj(out.reshape(b * t, self.num_heads * d)), cache


@jax.custom_vjp
def swiglu(gate: Array, up: Array) -> Array:
    """silu(gate) · up, with a backward that reads gate and up once and writes both gradients
    in one pass (autodiff's takes several passes over these, the widest activations)."""
    return jax.nn.silu(gate) * up


def _swiglu_forward(gate: Array, up: Array) -> tuple[Array, tuple[Array, Array]]:
    return jax.nn.silu(gate) * up, (gate, up)


def _swiglu_backward(residuals: tuple[Array, Array], d_out: Array) -> tuple[Array, Array]:
    gate, up = residuals
    sig = jax.nn.sigmoid(gate)
    d_gate = d_out * up * sig * (1.0 + gate * (1.0 - sig))
    return d_gate, d_out * gate * sig


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


class MLP(nnx.Module):
    def __init__(self, linears: Mapping[str, Linear]) -> None:
        # In the sampling layout, gate_proj stacks gate and up, and there is no up_proj.
        self.gate_proj, self.down_proj = linears["gate_proj"], linears["down_proj"]
        self.up_proj = linears.get("up_proj")

    def __call__(self, x: Array) -> Array:
        gate, up = project(x, [self.gate_proj, self.up_proj])
        return self.down_proj(swiglu(gate, up))


class DecoderLayer(nnx.Module):
    def __init__(self, attn: Attention, mlp: MLP, input_norm: RMSNorm, post_norm: RMSNorm) -> None:
        self.self_attn, self.mlp = attn, mlp
        self.input_layernorm, self.post_attention_layernorm = input_norm, post_norm

    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        mask: Array | None,
        cache: KVCache | None,
        index: Array | None,
        segments: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, index, segments)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


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
        self.inv_freq = nnx.Variable(
            jnp.asarray(cfg.rope.inverse_frequencies(cfg.head_dim), jnp.float32)
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
        x, cos, sin = self._embed(tokens, positions)
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, cache = layer(x, cos, sin, mask, None if caches is None else caches[i], index)
            if cache is not None:
                new_caches.append(cache)
        if last_only:
            x, t = x.reshape(b, t, -1)[:, -1], 1
        logits = self.unembed(self.norm(x)).reshape(b, t, -1)
        return logits, (new_caches if caches is not None else None)

    def features(self, tokens: Array, positions: Array, segments: Array | None) -> Array:
        """The training forward up to the head: the final norm's output [B·T, hidden], each
        position attending causally within its segment (and to segment 0) where ``segments``
        are given. Each layer keeps for the backward what ``self.remat`` says."""
        x, cos, sin = self._embed(tokens, positions)

        def one_layer(x: Array, layer: DecoderLayer) -> Array:
            return layer(x, cos, sin, None, None, None, segments)[0]

        x = self._layers_forward(x, one_layer)
        return self.norm(x)

    def _layers_forward(self, x: Array, one_layer: Callable[[Array, Any], Array]) -> Array:
        """``one_layer`` over every layer, scanned over stacked weights or unrolled, each
        under ``jax.checkpoint`` with the remat policy when there is one."""

        def apply(x: Array, graph: Any, weights: Any) -> Array:
            return one_layer(x, nnx.merge(graph, weights))

        if self.remat is not Remat.NONE:
            apply = jax.checkpoint(apply, policy=REMAT_POLICIES[self.remat], static_argnums=(1,))
        if self.scanned:
            graph, stacked = nnx.split(self.layers[0])
            return jax.lax.scan(lambda x, w: (apply(x, graph, w), None), x, stacked)[0]
        for layer in self.layers:
            x = apply(x, *nnx.split(layer))
        return x

    def _embed(self, tokens: Array, positions: Array) -> tuple[Array, Array, Array]:
        """The tokens' embeddings [B·T, hidden] and RoPE's cos and sin at ``positions``."""
        b, t = tokens.shape
        x = jnp.take(self.embed_tokens[...], tokens.reshape(b * t), axis=0)
        freqs = positions[..., None].astype(jnp.float32) * self.inv_freq[...]
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        return x, jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)

    def unembed(self, x: Array) -> Array:
        """float32 logits [rows, vocab] of normed features [rows, hidden]."""
        if self.lm_head is not None:
            logits = self.lm_head(x)
        elif self.sampling_layout:  # the embedding is [vocab, hidden]: an [out, in] kernel
            logits = times_transposed(x, self.embed_tokens[...])
        else:
            logits = x @ self.embed_tokens[...].T
        return logits.astype(jnp.float32)


TensorGetter = Callable[[str], "np.ndarray[Any, Any] | Array"]  # host or device arrays


def build_model(
    cfg: ModelConfig,
    tensor: TensorGetter,
    lora: LoraConfig | None,
    dtype: Any = jnp.float32,
    *,
    sampling_layout: bool = False,
) -> CausalLM:
    """The model with weights from ``tensor(hf_name)`` and, when ``lora.rank > 0``, fresh LoRA
    parameters on the targets ``lora`` selects (seeded by ``lora.seed``). ``sampling_layout``
    (no LoRA, forward only) keeps kernels ``[out, in]`` and stacks q/k/v and gate/up."""
    if sampling_layout and lora is not None and lora.rank:
        raise ValidationError("build_model", "the sampling layout has no LoRA; merge it first")
    rank = lora.rank if lora is not None else 0
    alpha = lora.alpha if lora is not None else 1.0
    keys = iter(jax.random.split(jax.random.key(lora.seed if lora else 0), 7 * cfg.num_layers + 1))

    names = cfg.family.names  # where the checkpoint keeps each module

    def array(*path: str | int, part: str = "weight") -> Array:
        value = tensor(names.weight(*path, part=part))
        if isinstance(value, jax.Array):  # a session's own weights (a sampling copy)
            return jnp.asarray(value, dtype)
        # Weights read from files stay on the host until a session or completer splits them
        # over its mesh: no device holds the whole model on the way.
        host: Array = np.asarray(value, dtype=dtype)  # type: ignore[assignment]
        return host

    def linear(path: tuple[str | int, ...], targeted: bool, bias: bool = False) -> Linear:
        kernel = array(*path)
        return Linear(
            kernel if sampling_layout else kernel.T,
            array(*path, part="bias") if bias else None,
            rank if targeted else 0,
            alpha,
            next(keys),
            sampling_layout,
        )

    def stacked(paths: Sequence[tuple[str | int, ...]], bias: bool) -> Linear:
        """Projections of one input as one ``[Σout, in]`` kernel (the sampling layout)."""
        kernels = [array(*path) for path in paths]
        biases = concatenate([array(*path, part="bias") for path in paths]) if bias else None
        widths = tuple(int(k.shape[0]) for k in kernels)
        return Linear(concatenate(kernels), biases, 0, alpha, None, True, widths)

    attn_on = bool(rank) and lora is not None and lora.train_attn
    mlp_on = bool(rank) and lora is not None and lora.train_mlp
    layers = []
    for i in range(cfg.num_layers):
        attn, mlp = ("layers", i, "self_attn"), ("layers", i, "mlp")
        if sampling_layout:
            attn_linears = {
                "q_proj": stacked(
                    [(*attn, n) for n in ("q_proj", "k_proj", "v_proj")], cfg.qkv_bias
                ),
                "o_proj": linear((*attn, "o_proj"), False),
            }
            mlp_linears = {
                "gate_proj": stacked([(*mlp, "gate_proj"), (*mlp, "up_proj")], False),
                "down_proj": linear((*mlp, "down_proj"), False),
            }
        else:
            attn_linears = {
                n: linear((*attn, n), attn_on, cfg.qkv_bias and n != "o_proj") for n in ATTN_TARGETS
            }
            mlp_linears = {n: linear((*mlp, n), mlp_on) for n in MLP_TARGETS}
        q_norm = RMSNorm(array(*attn, "q_norm"), cfg.rms_norm_eps) if cfg.qk_norm else None
        k_norm = RMSNorm(array(*attn, "k_norm"), cfg.rms_norm_eps) if cfg.qk_norm else None
        layers.append(
            DecoderLayer(
                Attention(cfg, attn_linears, q_norm, k_norm),
                MLP(mlp_linears),
                RMSNorm(array("layers", i, "input_layernorm"), cfg.rms_norm_eps),
                RMSNorm(array("layers", i, "post_attention_layernorm"), cfg.rms_norm_eps),
            )
        )
    embed = array("embed_tokens")
    unembed_on = bool(rank) and lora is not None and lora.train_unembed
    if cfg.tie_word_embeddings:
        # A tied head gets its own Linear only when LoRA targets it; the kernel is the embedding.
        head = Linear(embed.T, None, rank, alpha, next(keys)) if unembed_on else None
    else:
        head = linear(("lm_head",), unembed_on)
    norm = RMSNorm(array("norm"), cfg.rms_norm_eps)
    return CausalLM(cfg, embed, layers, norm, head, sampling_layout)


def concatenate(arrays: Sequence[Array]) -> Array:
    """Along the first axis, on the host if they all are there (see ``build_model``)."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        joined: Array = np.concatenate(arrays)  # type: ignore[assignment]
        return joined
    return jnp.concatenate(arrays)


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
