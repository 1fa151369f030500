"""A decoder layer and its pieces: RMSNorm, attention with RoPE (a sliding window and its own
rope where the layer has them), the gated MLP (SwiGLU, or Gemma's GeGLU), and the norms
around them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from galley.adapters.jax.attention import (
    Scores,
    Window,
    attention,
    causal_attention,
    decode_attention,
    group_mask,
)
from galley.adapters.jax.config import ModelConfig
from galley.adapters.jax.linear import Linear, project
from galley.adapters.jax.moe import RouterStats, SparseMoE
from galley.adapters.jax.rope import apply_rope

Array = jax.Array


class RMSNorm(nnx.Module):
    """x / rms(x) scaled by ``weight + offset``, in float32: Gemma stores its scale as an
    offset from 1 (``offset=1``), the others as the scale itself."""

    def __init__(self, weight: Array, eps: float, offset: float = 0.0) -> None:
        self.weight = nnx.Param(weight)
        self.eps = eps
        self.offset = offset

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = self.weight[...].astype(jnp.float32)
        if self.offset:
            scale = scale + self.offset
        return (scale * normed).astype(x.dtype)


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


def geglu(gate: Array, up: Array) -> Array:
    """gelu(gate) · up with gelu's tanh approximation (HF's ``gelu_pytorch_tanh``)."""
    return jax.nn.gelu(gate, approximate=True) * up


GATES: dict[str, Callable[[Array, Array], Array]] = {"silu": swiglu, "gelu_tanh": geglu}


class MLP(nnx.Module):
    def __init__(self, linears: Mapping[str, Linear], activation: str = "silu") -> None:
        # With stacked projections (the sampling layout, or a checkpoint that fuses them),
        # gate_proj stacks gate and up, and there is no up_proj.
        self.gate_proj, self.down_proj = linears["gate_proj"], linears["down_proj"]
        self.up_proj = linears.get("up_proj")
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        gate, up = project(x, [self.gate_proj, self.up_proj])
        return self.down_proj(GATES[self.activation](gate, up))


# Keys transposed, [B, kv_heads, D, S] (see ``decode_attention``); values [B, kv_heads, S, D].
KVCache = tuple[Array, Array]


def fused_attention(dtype: Any) -> Literal["cudnn", "xla"] | None:
    """The fused kernel causal training attention uses, or None for ``causal_attention``
    (written for CPUs): cuDNN's flash attention on a GPU in bf16/fp16, which never writes the
    [T, T] scores XLA's form keeps for the backward."""
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return None


class Inputs(NamedTuple):
    """What every layer of one forward reads besides the residual stream."""

    positions: Array  # [B, T]
    rope: tuple[Array, Array]  # cos, sin [B, T, D]
    local_rope: tuple[Array, Array] | None = None  # sliding-window layers' own (Gemma 3)
    segments: Array | None = None  # [B, T] ids where rows hold several sequences


class Attention(nnx.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        linears: Mapping[str, Linear],
        q_norm: RMSNorm | None,
        k_norm: RMSNorm | None,
        slides: bool,
    ) -> None:
        # With stacked projections (the sampling layout, or a checkpoint that fuses them),
        # q_proj stacks q, k and v, and there is no k_proj or v_proj.
        self.q_proj, self.o_proj = linears["q_proj"], linears["o_proj"]
        self.k_proj, self.v_proj = linears.get("k_proj"), linears.get("v_proj")
        self.q_norm, self.k_norm = q_norm, k_norm
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        self.scores = Scores(cfg.query_scale or cfg.head_dim**-0.5, cfg.attention_softcap)
        self.window_size = max(w for w in cfg.windows if w) if cfg.sliding else None
        # Where layers differ (Gemma), whether this one slides is data, so that the layers
        # still stack for scanning; where they are all alike it is static.
        mixed = len(set(cfg.windows)) > 1
        self.slides = nnx.Variable(np.asarray(slides)) if mixed else None

    def window(self, keys: int) -> Window | None:
        """This layer's window over ``keys`` keys; None where it cannot bind."""
        if self.window_size is None or self.window_size >= keys:
            return None
        return Window(self.window_size, None if self.slides is None else self.slides[...])

    def rope(self, inputs: Inputs) -> tuple[Array, Array]:
        if inputs.local_rope is None:
            return inputs.rope
        if self.slides is None:
            return inputs.local_rope if self.window_size is not None else inputs.rope
        (local_cos, local_sin), (cos, sin) = inputs.local_rope, inputs.rope
        slides = self.slides[...]
        return jnp.where(slides, local_cos, cos), jnp.where(slides, local_sin, sin)

    def __call__(
        self,
        x: Array,
        inputs: Inputs,
        mask: Array | None,
        cache: KVCache | None,
        index: Array | None,
    ) -> tuple[Array, KVCache | None]:
        """``x``: [B·T, hidden]; ``mask``: [B, T, S], or None for causal attention within
        ``x`` (training), each position seeing only its own segment and segment 0 where
        ``inputs.segments`` are given. A sliding window counts positions in training and
        cache slots with a ``mask`` (the same for the contiguous rows sampling writes). See
        ``attention`` for the head layout."""
        b, t = inputs.positions.shape
        kv, groups, d = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
        q, k, v = project(x, [self.q_proj, self.k_proj, self.v_proj])
        q, k, v = q.reshape(b, t, self.num_heads, d), k.reshape(b, t, kv, d), v.reshape(b, t, kv, d)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = self.rope(inputs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        window = self.window(t if mask is None else mask.shape[-1])
        fused = fused_attention(q.dtype)
        plain = window is None and self.scores.softcap is None and inputs.segments is None
        if mask is None and cache is None and plain and fused is not None:  # a GPU
            out = jax.nn.dot_product_attention(
                q, k, v, scale=self.scores.scale, is_causal=True, implementation=fused
            )
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
        if mask is not None and window is not None:
            slots = jnp.arange(mask.shape[-1])[None]
            mask = mask & window.near((0 if index is None else index) + slots[:, :t], slots)
        if cache is not None and mask is not None and t == 1:
            out = decode_attention(q, cache[0], v, group_mask(mask, groups), self.scores)
        elif mask is None:
            limit = None if window is None else (window, inputs.positions)
            out = causal_attention(q, k, v, groups, self.scores, inputs.segments, limit)
        else:
            out = attention(q, k, v, group_mask(mask, groups), self.scores)
        out = out.reshape(b, kv, t, groups, d).transpose(0, 2, 1, 3, 4)
        return self.o_proj(out.reshape(b * t, self.num_heads * d)), cache


class DecoderLayer(nnx.Module):
    def __init__(self, attn: Attention, mlp: MLP | SparseMoE, norms: Mapping[str, RMSNorm]) -> None:
        self.self_attn, self.mlp = attn, mlp
        self.input_layernorm = norms["input_layernorm"]
        self.post_attention_layernorm = norms["post_attention_layernorm"]
        # Gemma norms the attention's output (its post_attention_layernorm) and the MLP's
        # (post_feedforward_layernorm) too; its pre_feedforward_layernorm then plays the part
        # Llama's post_attention_layernorm does, the MLP's input norm.
        self.pre_feedforward_layernorm = norms.get("pre_feedforward_layernorm")
        self.post_feedforward_layernorm = norms.get("post_feedforward_layernorm")

    def __call__(
        self,
        x: Array,
        inputs: Inputs,
        mask: Array | None,
        cache: KVCache | None,
        index: Array | None,
    ) -> tuple[Array, KVCache | None, RouterStats | None]:
        """The layer's output, its cache, and its router's stats (mixtures of experts)."""
        h, cache = self.self_attn(self.input_layernorm(x), inputs, mask, cache, index)
        pre_mlp, post_mlp = self.pre_feedforward_layernorm, self.post_feedforward_layernorm
        if pre_mlp is None or post_mlp is None:
            x = x + h
            h, stats = self._mlp(self.post_attention_layernorm(x), inputs)
            return x + h, cache, stats
        x = x + self.post_attention_layernorm(h)
        h, stats = self._mlp(pre_mlp(x), inputs)
        return x + post_mlp(h), cache, stats

    def _mlp(self, x: Array, inputs: Inputs) -> tuple[Array, RouterStats | None]:
        if isinstance(self.mlp, SparseMoE):  # the router counts real tokens, not padding
            segments = inputs.segments
            return self.mlp(x, None if segments is None else (segments >= 0).reshape(-1))
        return self.mlp(x), None
