"""The built-in losses in JAX (same definitions as ``galley.core.domain.losses``), integer-label
log-probabilities, and a helper turning a JAX loss into a custom-loss function for
``galley.core.forward_backward_custom``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from galley.core.domain.losses import LossFn
from galley.core.domain.types import Datum

Array = jax.Array


def token_logprobs(logits: Array, targets: Array) -> Array:
    """log p(target) per position: gather the target logit, subtract logsumexp (no one-hot)."""
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def loss_sum(
    loss: LossFn, logp: Array, weights: Array, sampler_logp: Array, advantages: Array, clip: Array
) -> Array:
    """Per-token sums as defined in ``galley.core.domain.losses``; ``clip`` = (low, high) for
    ppo/cispo. Padding carries weight 0 and advantage 0, so it contributes nothing."""
    if loss is LossFn.CROSS_ENTROPY:
        return -jnp.sum(logp * weights)
    ratio = jnp.exp(logp - sampler_logp)
    if loss is LossFn.IMPORTANCE_SAMPLING:
        return -jnp.sum(ratio * advantages)
    clipped = jnp.clip(ratio, clip[0], clip[1])
    if loss is LossFn.PPO:
        return -jnp.sum(jnp.minimum(ratio * advantages, clipped * advantages))
    return -jnp.sum(jax.lax.stop_gradient(clipped) * logp * advantages)


def custom_loss_from_jax(
    loss: Callable[[Sequence[Datum], list[Array]], Array],
) -> Callable[
    [Sequence[Datum], list[np.ndarray[Any, Any]]], tuple[float, list[np.ndarray[Any, Any]]]
]:
    """Wrap a plain JAX loss of the per-datum logprobs into the (loss, d loss / d logprobs)
    function that ``forward_backward_custom`` takes, using ``jax.value_and_grad``."""

    def fn(
        data: Sequence[Datum], logprobs: list[np.ndarray[Any, Any]]
    ) -> tuple[float, list[np.ndarray[Any, Any]]]:
        value, grads = jax.value_and_grad(lambda lps: loss(data, lps))(
            [jnp.asarray(x) for x in logprobs]
        )
        return float(value), [np.asarray(g) for g in grads]

    return fn
