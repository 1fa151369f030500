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
from galley.core.errors import ConfigError

Array = jax.Array


def token_logprobs(logits: Array, targets: Array) -> Array:
    """log p(target) per position: gather the target logit, subtract logsumexp (no one-hot)."""
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def checked_chunk(positions: int, where: str) -> int:
    """A ``logits_chunk``: positions a chunk holds, 0 for no chunks."""
    if type(positions) is not int or positions < 0:
        raise ConfigError(
            f"{where}: expected positions per chunk (0: no chunks), got {positions!r}"
        )
    return positions


def chunked_token_logprobs(
    unembed: Callable[[Array], Array], features: Array, targets: Array, chunk: int
) -> Array:
    """``token_logprobs(unembed(features), targets)`` computed ``chunk`` positions at a time,
    each chunk's logits recomputed in the backward instead of kept: the ``[positions, vocab]``
    logits never exist whole, forward or backward. ``features``: [N, hidden]; ``targets``: [N]."""
    n, width = features.shape
    chunk = min(chunk, n)  # fewer positions than a chunk: one chunk of them, unpadded
    pad = -n % chunk
    xs = jnp.pad(features, ((0, pad), (0, 0))).reshape(-1, chunk, width)
    ts = jnp.pad(targets, (0, pad)).reshape(-1, chunk)

    @jax.checkpoint
    def one(x: Array, t: Array) -> Array:
        return token_logprobs(unembed(x), t)

    logp: Array = jax.lax.scan(lambda carry, xt: (carry, one(*xt)), None, (xs, ts))[1]
    return logp.reshape(-1)[:n]


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
