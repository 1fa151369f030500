"""The built-in losses (the Tinker API's semantics) and a numpy reference of each.

Losses are per-token sums, never averages: callers normalise through ``weights``. The numpy
reference returns the loss and its gradient with respect to the per-token logprobs; fake
adapters train with it and real adapters are tested against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from galley.core.errors import ValidationError

FloatArray = npt.NDArray[np.float64]


class LossFn(StrEnum):
    CROSS_ENTROPY = "cross_entropy"
    IMPORTANCE_SAMPLING = "importance_sampling"
    PPO = "ppo"
    CISPO = "cispo"


LOSS_NAMES: tuple[str, ...] = tuple(loss.value for loss in LossFn)

REQUIRED_INPUTS: Mapping[LossFn, tuple[str, ...]] = {
    LossFn.CROSS_ENTROPY: ("target_tokens",),
    LossFn.IMPORTANCE_SAMPLING: ("target_tokens", "logprobs", "advantages"),
    LossFn.PPO: ("target_tokens", "logprobs", "advantages"),
    LossFn.CISPO: ("target_tokens", "logprobs", "advantages"),
}

# Config keys each loss accepts, with defaults.
CONFIG_DEFAULTS: Mapping[LossFn, Mapping[str, float]] = {
    LossFn.CROSS_ENTROPY: {},
    LossFn.IMPORTANCE_SAMPLING: {},
    LossFn.PPO: {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    LossFn.CISPO: {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
}


def parse_loss_fn(name: Any, field: str = "loss_fn") -> LossFn:
    """Turn a loss name into :class:`LossFn`, or say which names exist."""
    try:
        return LossFn(name)
    except ValueError:
        raise ValidationError(
            field, f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}"
        ) from None


def resolve_loss_config(
    loss: LossFn, config: Mapping[str, float] | None, field: str = "loss_fn_config"
) -> dict[str, float]:
    """Defaults filled in; unknown keys and inverted clip ranges refused."""
    defaults = CONFIG_DEFAULTS[loss]
    given = dict(config or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ValidationError(
            field, f"unknown key(s) {', '.join(unknown)} for loss {loss.value}; valid keys: {valid}"
        )
    resolved = {**defaults, **{k: float(v) for k, v in given.items()}}
    if "clip_low_threshold" in resolved:
        low, high = resolved["clip_low_threshold"], resolved["clip_high_threshold"]
        if not 0 <= low <= 1 <= high:
            raise ValidationError(
                field,
                f"expected 0 <= clip_low_threshold <= 1 <= clip_high_threshold, got {low}, {high}",
            )
    return resolved


def reference_loss(
    loss: LossFn,
    logprobs: npt.ArrayLike,
    inputs: Mapping[str, npt.ArrayLike],
    config: Mapping[str, float] | None = None,
) -> tuple[float, FloatArray]:
    """Loss of one sequence and d(loss)/d(logprobs), in float64.

    ``logprobs`` are the current policy's per-token target logprobs; ``inputs`` holds
    ``weights`` (cross entropy, default 1) or ``logprobs`` of the sampler (q) and ``advantages``.
    """
    # Cross entropy and importance sampling take no config: an empty one needs no resolving.
    cfg = {} if not config and not CONFIG_DEFAULTS[loss] else resolve_loss_config(loss, config)
    logp = np.asarray(logprobs, dtype=np.float64)
    if loss is LossFn.CROSS_ENTROPY:
        given = inputs.get("weights")
        weights = np.ones_like(logp) if given is None else np.asarray(given, dtype=np.float64)
        return float(-(logp * weights).sum()), -weights
    adv = np.asarray(inputs["advantages"], dtype=np.float64)
    ratio = np.exp(logp - np.asarray(inputs["logprobs"], dtype=np.float64))
    if loss is LossFn.IMPORTANCE_SAMPLING:
        return float(-(ratio * adv).sum()), -ratio * adv
    clipped = np.clip(ratio, cfg["clip_low_threshold"], cfg["clip_high_threshold"])
    if loss is LossFn.PPO:
        unclipped_term, clipped_term = ratio * adv, clipped * adv
        # The gradient flows through r only where min() picks the unclipped term.
        active = unclipped_term <= clipped_term
        return float(-np.minimum(unclipped_term, clipped_term).sum()), np.where(
            active, -ratio * adv, 0.0
        )
    # CISPO: the clipped ratio is a constant weight on the policy-gradient term.
    return float(-(clipped * logp * adv).sum()), -clipped * adv
