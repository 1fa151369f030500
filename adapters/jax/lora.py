"""A LoRA projection with a hand-written backward: ``x @ (W + s·A·B)`` for 2-D ``x``.

Autodiff of ``x @ W + s·(x @ A) @ B`` is correct but slow on a frozen base: the ``[tokens, out]``
LoRA branch is written, added and differentiated as a product with an inner dimension of only
``rank``, which matmul libraries run far below their peak. Here the adapter is merged into the
kernel first when there are enough rows for that to be cheaper (the merge costs ``in·rank·out``
FLOPs, not ``tokens·rank·(in + out)``), and the backward routes every weight gradient through
``rank``-wide intermediates, putting the small operand on the transposed side of each
contraction so no ``[tokens, features]`` activation is ever transposed.
"""

from __future__ import annotations

from functools import partial

import jax

Array = jax.Array

# dot_general dimension numbers: contract the last axes ("a @ b.T") or the first ("a.T @ b").
_LAST = (((1,), (1,)), ((), ()))
_FIRST = (((0,), (0,)), ((), ()))


def _merge_is_cheaper(rows: int, kernel: Array) -> bool:
    fan_in, fan_out = kernel.shape
    return rows * (fan_in + fan_out) > fan_in * fan_out


def _project(x: Array, kernel: Array, lora_a: Array, lora_b: Array, scale: float) -> Array:
    if _merge_is_cheaper(x.shape[0], kernel):
        return x @ (kernel + (lora_a @ lora_b) * scale)
    return x @ kernel + ((x @ lora_a) @ lora_b) * scale


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def lora_project(x: Array, kernel: Array, lora_a: Array, lora_b: Array, scale: float) -> Array:
    """``x @ kernel + scale·(x @ lora_a) @ lora_b`` for ``x`` of shape [rows, in]."""
    return _project(x, kernel, lora_a, lora_b, scale)


def _forward(
    x: Array, kernel: Array, lora_a: Array, lora_b: Array, scale: float
) -> tuple[Array, tuple[Array, ...]]:
    return _project(x, kernel, lora_a, lora_b, scale), (x, kernel, lora_a, lora_b)


def _backward(scale: float, residuals: tuple[Array, ...], g: Array) -> tuple[Array, ...]:
    x, kernel, lora_a, lora_b = residuals
    g_rank = jax.lax.dot_general(g, lora_b, _LAST) * scale  # [rows, rank]
    if _merge_is_cheaper(x.shape[0], kernel):
        dx = jax.lax.dot_general(g, kernel + (lora_a @ lora_b) * scale, _LAST)
    else:
        dx = jax.lax.dot_general(g, kernel, _LAST) + jax.lax.dot_general(g_rank, lora_a, _LAST)
    d_a = jax.lax.dot_general(g_rank, x, _FIRST).T  # [in, rank] via [rank, in]
    d_b = jax.lax.dot_general((x @ lora_a) * scale, g, _FIRST)  # [rank, out]
    # The kernel's gradient is exact but unused under LoRA (the base is frozen); XLA drops it.
    d_kernel = jax.lax.dot_general(x, g, _FIRST)
    return dx, d_kernel, d_a.astype(lora_a.dtype), d_b.astype(lora_b.dtype)


lora_project.defvjp(_forward, _backward)
