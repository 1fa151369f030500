"""The linear layer of galley's decoders and its products: a kernel stored ``[in, out]`` (or
HF's ``[out, in]`` in the sampling layout, where few-row products run as broadcast
multiply-and-sum, ``times_transposed``), an optional bias and an optional LoRA, and the
projection of one input through several of them at once (``project``)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from galley.adapters.jax.lora import lora_project, merge_is_cheaper, split_columns
from galley.core.errors import ValidationError

Array = jax.Array


class Linear(nnx.Module):
    def __init__(
        self,
        kernel: Array,
        bias: Array | None,
        lora_rank: int,
        lora_alpha: float,
        key: Array | None,
        transposed: bool = False,
        parts: tuple[int, ...] = (),
    ) -> None:
        if transposed and lora_rank:
            raise ValidationError("Linear", "LoRA needs an [in, out] kernel, not a transposed one")
        self.kernel = nnx.Param(kernel)
        self.transposed = transposed  # kernel is [out, in]
        # Output widths when the kernel stacks several projections (the sampling layout, or
        # a checkpoint's fused projections).
        self.parts = parts
        self.bias = nnx.Param(bias) if bias is not None else None
        self.lora_scale = lora_alpha / lora_rank if lora_rank else 0.0
        if lora_rank and key is not None:
            # Adapters are float32 whatever the base dtype: they are what trains, and a bf16
            # weight would round away AdamW's ~1e-4 updates. Products cast them to x's dtype.
            fan_in = kernel.shape[0]
            bound = 1.0 / np.sqrt(fan_in)
            a = jax.random.uniform(key, (fan_in, lora_rank), jnp.float32, -bound, bound)
            self.lora_a: nnx.LoRAParam[Array] | None = nnx.LoRAParam(a)
            self.lora_b: nnx.LoRAParam[Array] | None = nnx.LoRAParam(
                jnp.zeros((lora_rank, kernel.shape[1]), jnp.float32)
            )
        else:
            self.lora_a = self.lora_b = None

    def __call__(self, x: Array) -> Array:
        return project(x, [self])[0]


SKINNY_ROWS = 16  # at most this many rows (decoding), a matmul is bound by reading the weights


def times_transposed(x: Array, kernel: Array) -> Array:
    """``x @ kernel.T`` for an ``[out, in]`` kernel. For a few rows, as a broadcast multiply
    summed over ``in``: XLA then streams each kernel row once for all rows of ``x``, faster than
    its GEMM on these shapes (docs/performance.md has the figures). Forward only: its autodiff
    would materialise ``[out, rows, in]``.

    Each ``x`` should feed one such product: XLA merges equal broadcasts of a shared ``x``
    into one materialised ``[out, rows, in]`` array (hence the stacked kernels)."""
    if x.shape[0] <= SKINNY_ROWS and jax.default_backend() == "cpu":
        # Products and sums in float32, as a GEMM accumulates. Measured on CPUs only: other
        # backends keep their own GEMM.
        products = kernel[:, None, :].astype(jnp.float32) * x[None, :, :].astype(jnp.float32)
        return jnp.sum(products, axis=-1).T.astype(x.dtype)
    return jax.lax.dot_general(x, kernel, (((1,), (1,)), ((), ())))


def project(x: Array, linears: Sequence[Linear | None]) -> list[Array]:
    """The outputs of ``linears`` applied to the same ``x`` ([rows, in]: the model keeps
    activations 2-D so no matmul sees a batch axis). With enough rows, they run as one matmul
    over the concatenated kernels (LoRA merged in: see ``lora``). In the sampling layout the
    first linear stacks them all and the others are None, as with fused projections."""
    if linears[0] is not None and linears[0].parts:
        return _stacked_outputs(x, linears[0])
    return _each_output(x, [linear for linear in linears if linear is not None])


def _each_output(x: Array, linears: Sequence[Linear]) -> list[Array]:
    kernels = tuple(linear.kernel[...] for linear in linears)
    adapters = [(linear.lora_a, linear.lora_b) for linear in linears]
    if all(a is not None and b is not None for a, b in adapters):
        outputs = list(
            lora_project(
                x,
                kernels,
                tuple(a[...].astype(x.dtype) for a, _ in adapters),  # type: ignore[index]
                tuple(b[...].astype(x.dtype) for _, b in adapters),  # type: ignore[index]
                linears[0].lora_scale,
            )
        )
    elif any(a is not None for a, _ in adapters):
        return [out for linear in linears for out in project(x, [linear])]
    elif linears[0].transposed:
        outputs = [times_transposed(x, kernel) for kernel in kernels]
    elif len(kernels) > 1 and merge_is_cheaper(x.shape[0], kernels):
        outputs = list(split_columns(x @ jnp.concatenate(kernels, axis=1), kernels))
    else:
        outputs = [x @ kernel for kernel in kernels]
    return [
        y + linear.bias[...] if linear.bias is not None else y
        for y, linear in zip(outputs, linears, strict=True)
    ]


def _stacked_outputs(x: Array, stacked: Linear) -> list[Array]:
    if stacked.transposed:
        y = times_transposed(x, stacked.kernel[...])
        if stacked.bias is not None:
            y = y + stacked.bias[...]
    else:  # a checkpoint's fused projection, trained as one (with one LoRA)
        y = _each_output(x, [stacked])[0]
    return list(jnp.split(y, np.cumsum(stacked.parts)[:-1].tolist(), axis=1))
