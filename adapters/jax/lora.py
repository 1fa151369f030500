"""Projections of one input through several LoRA-adapted kernels, with a hand-written backward.

``lora_project(x, kernels, lora_as, lora_bs, scale)`` returns ``x @ (W_i + s·A_i·B_i)`` for each
projection ``i`` (q/k/v, or gate/up, share their input). Autodiff of the textbook
``x @ W + s·(x @ A) @ B`` is correct but slow on a frozen base: every ``[rows, out]`` LoRA
branch is written, added and differentiated as a product whose inner dimension is only
``rank``, which matmul libraries run far below peak. Here, when there are enough rows for it
to be cheaper (merging costs ``in·rank·out`` FLOPs, the branch ``rows·rank·(in + out)``), each
adapter is merged into its kernel and all projections run as one matmul; the backward runs the
input gradient as one matmul too, and routes the adapter gradients through ``rank``-wide
intermediates, with the small operand on the transposed side of each contraction so no
``[rows, features]`` activation is ever transposed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array
Arrays = tuple[Array, ...]

# dot_general dimension numbers: contract the last axes ("a @ b.T") or the first ("a.T @ b").
_LAST = (((1,), (1,)), ((), ()))
_FIRST = (((0,), (0,)), ((), ()))


def merge_is_cheaper(rows: int, kernels: Sequence[Array]) -> bool:
    fan_in, fan_out = kernels[0].shape[0], sum(k.shape[1] for k in kernels)
    return rows * (fan_in + fan_out) > fan_in * fan_out


def split_columns(y: Array, kernels: Sequence[Array]) -> Arrays:
    bounds, edge = [], 0
    for kernel in kernels[:-1]:
        edge += kernel.shape[1]
        bounds.append(edge)
    return tuple(jnp.split(y, bounds, axis=1))


def _merged(kernels: Arrays, lora_as: Arrays, lora_bs: Arrays, scale: float) -> Array:
    merged = [w + (a @ b) * scale for w, a, b in zip(kernels, lora_as, lora_bs, strict=True)]
    return jnp.concatenate(merged, axis=1) if len(merged) > 1 else merged[0]


def _project(x: Array, kernels: Arrays, lora_as: Arrays, lora_bs: Arrays, scale: float) -> Arrays:
    if merge_is_cheaper(x.shape[0], kernels):
        return split_columns(x @ _merged(kernels, lora_as, lora_bs, scale), kernels)
    return tuple(
        x @ w + ((x @ a) @ b) * scale for w, a, b in zip(kernels, lora_as, lora_bs, strict=True)
    )


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def lora_project(
    x: Array, kernels: Arrays, lora_as: Arrays, lora_bs: Arrays, scale: float
) -> Arrays:
    """``x @ W_i + scale·(x @ A_i) @ B_i`` for each ``i``; ``x``: [rows, in]."""
    return _project(x, kernels, lora_as, lora_bs, scale)


def _forward(
    x: Array, kernels: Arrays, lora_as: Arrays, lora_bs: Arrays, scale: float
) -> tuple[Arrays, tuple[Array, Arrays, Arrays, Arrays]]:
    return _project(x, kernels, lora_as, lora_bs, scale), (x, kernels, lora_as, lora_bs)


def _backward(
    scale: float, residuals: tuple[Array, Arrays, Arrays, Arrays], grads: Arrays
) -> tuple[Array, Arrays, Arrays, Arrays]:
    x, kernels, lora_as, lora_bs = residuals
    g_rank = [jax.lax.dot_general(g, b, _LAST) * scale for g, b in zip(grads, lora_bs, strict=True)]
    if merge_is_cheaper(x.shape[0], kernels):
        g_all = jnp.concatenate(grads, axis=1) if len(grads) > 1 else grads[0]
        dx = jax.lax.dot_general(g_all, _merged(kernels, lora_as, lora_bs, scale), _LAST)
    else:
        parts = [
            jax.lax.dot_general(g, w, _LAST) + jax.lax.dot_general(gr, a, _LAST)
            for g, w, gr, a in zip(grads, kernels, g_rank, lora_as, strict=True)
        ]
        dx = functools.reduce(jnp.add, parts)
    # [rank, in] and [rank, out] products: the rank-wide operand is the transposed one.
    d_as = tuple(jax.lax.dot_general(gr, x, _FIRST).T for gr in g_rank)
    d_bs = tuple(
        jax.lax.dot_general((x @ a) * scale, g, _FIRST) for a, g in zip(lora_as, grads, strict=True)
    )
    # Exact, but unused under LoRA (the base is frozen), so XLA drops them.
    d_kernels = tuple(jax.lax.dot_general(x, g, _FIRST) for g in grads)
    return dx, d_kernels, d_as, d_bs


lora_project.defvjp(_forward, _backward)
