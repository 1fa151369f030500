"""Building a model from a checkpoint's tensors: each module's weights read by the name its
family keeps them under, in the training layout (kernels ``[in, out]``, LoRA on the targets)
or the sampling layout (kernels ``[out, in]``, q/k/v and gate/up stacked, no LoRA)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from galley.adapters.jax.config import ModelConfig, layer_shapes
from galley.adapters.jax.layers import GATES, MLP, Attention, DecoderLayer, RMSNorm
from galley.adapters.jax.linear import Linear
from galley.adapters.jax.model import ATTN_TARGETS, MLP_TARGETS, CausalLM
from galley.adapters.jax.moe import Experts, SparseMoE
from galley.core.domain.types import LoraConfig
from galley.core.errors import ValidationError

Array = jax.Array
TensorGetter = Callable[[str], "np.ndarray[Any, Any] | Array"]  # host or device arrays
Path = tuple[str | int, ...]  # a module's path in galley's model (``families.ModulePath``)


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
    return _Builder(cfg, tensor, lora, dtype, sampling_layout).model()


class _Builder:
    def __init__(
        self,
        cfg: ModelConfig,
        tensor: TensorGetter,
        lora: LoraConfig | None,
        dtype: Any,
        sampling_layout: bool,
    ) -> None:
        self.cfg, self.tensor, self.dtype, self.sampling_layout = (
            cfg,
            tensor,
            dtype,
            sampling_layout,
        )
        self.names = cfg.family.names  # where the checkpoint keeps each module
        self.rank = lora.rank if lora is not None else 0
        self.alpha = lora.alpha if lora is not None else 1.0
        self.attn_on = bool(self.rank) and lora is not None and lora.train_attn
        self.mlp_on = bool(self.rank) and lora is not None and lora.train_mlp
        self.unembed_on = bool(self.rank) and lora is not None and lora.train_unembed
        seed = jax.random.key(lora.seed if lora else 0)
        self.keys: Iterator[Array] = iter(jax.random.split(seed, 12 * cfg.num_layers + 1))

    def model(self) -> CausalLM:
        cfg = self.cfg
        norm_names = [name for name in layer_shapes(cfg) if name.endswith("layernorm")]
        layers = []
        for i in range(cfg.num_layers):
            attn, mlp = ("layers", i, "self_attn"), ("layers", i, "mlp")
            layers.append(
                DecoderLayer(
                    Attention(
                        cfg,
                        self.attention_linears(attn),
                        self.norm(*attn, "q_norm") if cfg.qk_norm else None,
                        self.norm(*attn, "k_norm") if cfg.qk_norm else None,
                        slides=cfg.windows[i] is not None,
                    ),
                    self.sparse_mlp(i, mlp) if cfg.moe is not None else self.dense_mlp(mlp),
                    {name: self.norm("layers", i, name) for name in norm_names},
                )
            )
        embed = self.array("embed_tokens")
        if cfg.tie_word_embeddings:
            # A tied head gets its own Linear only when LoRA targets it; its kernel is the
            # embedding.
            head = (
                Linear(embed.T, None, self.rank, self.alpha, next(self.keys))
                if self.unembed_on
                else None
            )
        else:
            head = self.linear(("lm_head",), self.unembed_on)
        return CausalLM(cfg, embed, layers, self.norm("norm"), head, self.sampling_layout)

    def read(self, name: str) -> Array:
        value = self.tensor(name)
        if isinstance(value, jax.Array):  # a session's own weights (a sampling copy)
            return jnp.asarray(value, self.dtype)
        # Weights read from files stay on the host until a session or completer splits them
        # over its mesh: no device holds the whole model on the way.
        host: Array = np.asarray(value, dtype=self.dtype)  # type: ignore[assignment]
        return host

    def array(self, *path: str | int, part: str = "weight") -> Array:
        return self.read(self.names.weight(*path, part=part))

    def linear(
        self, path: Path, targeted: bool, bias: bool = False, parts: tuple[int, ...] = ()
    ) -> Linear:
        kernel = self.array(*path)
        return Linear(
            kernel if self.sampling_layout else kernel.T,
            self.array(*path, part="bias") if bias else None,
            self.rank if targeted else 0,
            self.alpha,
            next(self.keys),
            self.sampling_layout,
            parts,
        )

    def stacked(self, paths: Sequence[Path], bias: bool) -> Linear:
        """Projections of one input as one ``[Σout, in]`` kernel (the sampling layout)."""
        kernels = [self.array(*path) for path in paths]
        biases = concatenate([self.array(*p, part="bias") for p in paths]) if bias else None
        widths = tuple(int(k.shape[0]) for k in kernels)
        return Linear(concatenate(kernels), biases, 0, self.alpha, None, True, widths)

    def norm(self, *path: str | int) -> RMSNorm:
        return RMSNorm(self.array(*path), self.cfg.rms_norm_eps, self.cfg.family.norm_offset)

    def attention_linears(self, attn: Path) -> dict[str, Linear]:
        cfg, on = self.cfg, self.attn_on
        if cfg.family.fused_projections:  # the checkpoint stacks them: one kernel, one LoRA
            q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
            return {
                "q_proj": self.linear((*attn, "q_proj"), on, cfg.qkv_bias, (q, kv, kv)),
                "o_proj": self.linear((*attn, "o_proj"), on),
            }
        if self.sampling_layout:
            qkv = [(*attn, n) for n in ("q_proj", "k_proj", "v_proj")]
            return {
                "q_proj": self.stacked(qkv, cfg.qkv_bias),
                "o_proj": self.linear((*attn, "o_proj"), False),
            }
        return {
            n: self.linear((*attn, n), on, cfg.qkv_bias and n != "o_proj") for n in ATTN_TARGETS
        }

    def dense_mlp(self, mlp: Path) -> MLP:
        cfg, on = self.cfg, self.mlp_on
        if cfg.family.fused_projections:
            inner = cfg.intermediate_size
            linears = {
                "gate_proj": self.linear((*mlp, "gate_proj"), on, parts=(inner, inner)),
                "down_proj": self.linear((*mlp, "down_proj"), on),
            }
        elif self.sampling_layout:
            linears = {
                "gate_proj": self.stacked([(*mlp, "gate_proj"), (*mlp, "up_proj")], False),
                "down_proj": self.linear((*mlp, "down_proj"), False),
            }
        else:
            linears = {n: self.linear((*mlp, n), on) for n in MLP_TARGETS}
        return MLP(linears, cfg.activation)

    def sparse_mlp(self, i: int, mlp: Path) -> SparseMoE:
        cfg = self.cfg
        assert cfg.moe is not None
        shared = shared_gate = None
        if cfg.moe.shared_expert_size:
            shared = MLP(
                {n: self.linear((*mlp, "shared_expert", n), self.mlp_on) for n in MLP_TARGETS},
                cfg.activation,
            )
            shared_gate = self.linear((*mlp, "shared_expert_gate"), False)
        return SparseMoE(
            cfg.moe,
            self.linear((*mlp, "router"), False),
            self.experts(i),
            GATES[cfg.activation],
            shared,
            shared_gate,
        )

    def experts(self, i: int) -> Experts:
        """Layer ``i``'s experts, each one's kernels read by its own name and stacked
        ``[experts, in, out]``, gate and up side by side."""
        assert self.cfg.moe is not None
        names = self.names
        gate, up, down = names.expert_parts
        each = range(self.cfg.moe.num_experts)
        gate_up = [
            concatenate([self.read(names.expert(i, e, p)) for p in (gate, up)]).T for e in each
        ]
        downs = [self.read(names.expert(i, e, down)).T for e in each]
        rank = self.rank if self.mlp_on else 0
        return Experts(stack(gate_up), stack(downs), rank, self.alpha, next(self.keys))


def concatenate(arrays: Sequence[Array]) -> Array:
    """Along the first axis, on the host if they all are there (see ``_Builder.read``)."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        joined: Array = np.concatenate(arrays)  # type: ignore[assignment]
        return joined
    return jnp.concatenate(arrays)


def stack(arrays: Sequence[Array]) -> Array:
    """Along a new first axis, on the host if they all are there."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        stacked: Array = np.stack(arrays)  # type: ignore[assignment]
        return stacked
    return jnp.stack(arrays)
