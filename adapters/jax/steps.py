"""The JAX TrainingClient's compiled steps: forward (log-probabilities), forward-backward
(the loss's gradient, accumulated) and the AdamW update, each jitted once per shape bucket
with its outputs pinned to its inputs' shardings. A session (``training.py``) submits them."""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from galley.adapters.jax.losses import chunked_token_logprobs, loss_sum, token_logprobs
from galley.adapters.jax.model import CausalLM
from galley.adapters.jax.moe import RouterStats
from galley.adapters.jax.sharding import Pinned
from galley.core.domain.losses import LossFn
from galley.core.domain.types import AdamParams

# Traces per step function (a trace is a compilation): tests assert buckets stop recompiles.
TRACES: Counter[str] = Counter()


def adamw() -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=1e-4, b1=0.9, b2=0.95, eps=1e-12, weight_decay=0.0
    )


def forward_logprobs(
    graphdef: Any,
    trainable: Any,
    frozen: Any,
    batch: dict[str, jax.Array],
    logits_chunk: int = 0,
) -> jax.Array:
    """log p(target) at every position of ``batch`` [B, T]. Rows with ``segments`` hold several
    sequences (packed datums, or tails after a shared head), each attending to itself (and the
    head) at its own ``positions``. With ``logits_chunk``, the logits are computed that many
    positions at a time (``chunked_token_logprobs``)."""
    return _forward(graphdef, trainable, frozen, batch, logits_chunk)[0]


def _forward(
    graphdef: Any,
    trainable: Any,
    frozen: Any,
    batch: dict[str, jax.Array],
    logits_chunk: int,
) -> tuple[jax.Array, RouterStats | None]:
    """``forward_logprobs``, and a mixture of experts' router stats."""
    model: CausalLM = nnx.merge(graphdef, trainable, frozen)
    tokens, targets = batch["tokens"], batch["targets"]
    if "segments" in batch:
        positions, segments = batch["positions"], batch["segments"]
    else:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        segments = None
    features, router = model.features(tokens, positions, segments)
    if logits_chunk:
        logp = chunked_token_logprobs(model.unembed, features, targets.reshape(-1), logits_chunk)
    else:
        logp = token_logprobs(model.unembed(features), targets.reshape(-1))
    return logp.reshape(tokens.shape), router


def _loss(
    trainable: Any,
    graphdef: Any,
    frozen: Any,
    batch: dict[str, jax.Array],
    loss: LossFn,
    clip: jax.Array,
    logits_chunk: int,
    balance_coef: float,
) -> tuple[jax.Array, tuple[jax.Array, dict[str, jax.Array]]]:
    """The loss summed over tokens, and (log-probabilities, metrics). A mixture of experts
    reports its load-balancing loss; with ``balance_coef`` it is added, times the pass's
    tokens (the coefficient is per token, as HF's is on its mean loss)."""
    logp, router = _forward(graphdef, trainable, frozen, batch, logits_chunk)
    value = loss_sum(
        loss, logp, batch["weights"], batch["sampler_logprobs"], batch["advantages"], clip
    )
    metrics: dict[str, jax.Array] = {}
    if router is not None:
        balance = router.balance_loss()
        metrics["router_balance_loss"] = balance
        if balance_coef:
            tokens = jnp.sum(batch["segments"] >= 0) if "segments" in batch else logp.size
            value = value + balance_coef * balance * tokens
    return value, (logp, metrics)


@attrs.frozen
class Pins:
    """Where a session's trainable weights (and gradients) and optimizer state live: the
    steps keep them there."""

    trainable: Pinned
    opt_state: Pinned
    # Across processes, the log-probabilities every process reads whole are gathered inside
    # the step, in order with its other exchanges; a gather after it, on the thread that
    # reads them, could run out of order with the next step's on another process.
    gathered: Pinned | None = None

    def whole(self, logp: jax.Array) -> jax.Array:
        return logp if self.gathered is None else self.gathered(logp)


STATIC = ("graphdef", "loss", "pins", "logits_chunk", "balance_coef")


@partial(jax.jit, static_argnames=STATIC)
def forward_step(
    graphdef: Any,
    trainable: Any,
    frozen: Any,
    batch: dict[str, jax.Array],
    loss: LossFn,
    clip: jax.Array,
    pins: Pins,
    logits_chunk: int = 0,
    balance_coef: float = 0.0,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    TRACES["forward"] += 1
    value, (logp, metrics) = _loss(
        trainable, graphdef, frozen, batch, loss, clip, logits_chunk, balance_coef
    )
    return value, pins.whole(logp), metrics


@partial(jax.jit, static_argnames=STATIC, donate_argnames=("grads",))
def forward_backward_step(
    graphdef: Any,
    trainable: Any,
    frozen: Any,
    grads: Any,
    batch: dict[str, jax.Array],
    loss: LossFn,
    clip: jax.Array,
    pins: Pins,
    logits_chunk: int = 0,
    balance_coef: float = 0.0,
) -> tuple[jax.Array, jax.Array, Any, dict[str, jax.Array]]:
    TRACES["forward_backward"] += 1
    (value, (logp, metrics)), g = jax.value_and_grad(_loss, has_aux=True)(
        trainable, graphdef, frozen, batch, loss, clip, logits_chunk, balance_coef
    )
    return value, pins.whole(logp), pins.trainable(jax.tree.map(jnp.add, grads, g)), metrics


@partial(jax.jit, static_argnames=("pins",), donate_argnames=("trainable", "opt_state", "grads"))
def optim_step(
    trainable: Any, opt_state: Any, grads: Any, hyper: dict[str, jax.Array], pins: Pins
) -> tuple[Any, Any, Any, jax.Array, jax.Array]:
    TRACES["optim_step"] += 1
    grad_norm = optax.tree.norm(grads)
    clip = hyper["grad_clip_norm"]
    scale = jnp.where((clip > 0) & (grad_norm > clip), clip / grad_norm, 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    for name in ("learning_rate", "b1", "b2", "eps", "weight_decay"):
        opt_state.hyperparams[name] = hyper[name]
    updates, new_state = adamw().update(grads, opt_state, trainable)
    new = optax.apply_updates(trainable, updates)
    # A non-finite gradient changes nothing (weights, moments, count): the step is skipped.
    finite = jnp.isfinite(grad_norm)

    def keep(fresh: Any, old: Any) -> Any:
        return jax.tree.map(lambda a, b: jnp.where(finite, a, b), fresh, old)

    zero = jax.tree.map(jnp.zeros_like, grads)
    update_norm = jnp.where(finite, optax.tree.norm(updates), 0.0)
    return (
        pins.trainable(keep(new, trainable)),
        pins.opt_state(keep(new_state, opt_state)),
        pins.trainable(zero),
        grad_norm,
        update_norm,
    )


def hyper_arrays(p: AdamParams) -> dict[str, jax.Array]:
    """``optim_step``'s traced hyperparameters: new values never recompile."""
    hyper = {
        "learning_rate": p.learning_rate,
        "b1": p.beta1,
        "b2": p.beta2,
        "eps": p.eps,
        "weight_decay": p.weight_decay,
        "grad_clip_norm": p.grad_clip_norm,
    }
    return {k: jnp.asarray(v, jnp.float32) for k, v in hyper.items()}
