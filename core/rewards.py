"""Rewards for reinforcement learning: scorers (``galley.core.scorers``) used as rewards, or
functions in TRL's batched form, each with a weight.

A reward is named as a scorer is (``exact_match``, ``char_similarity``, ``regex:<pattern>``,
``module:function``) and called in one of two forms, told apart by its parameters:

- per completion, galley's: ``fn(example, completion) -> float``, ``example`` being the
  dataset row with the prompt's ``messages`` and the ``reference`` answer;
- batched, TRL's ``GRPOTrainer``'s: ``fn(prompts, completions, **columns) -> list[float]``,
  with the prompts as the rows give them and every other column of the rows by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from galley.core.errors import ConfigError, ValidationError
from galley.core.scorers import resolve_scorer


def _is_batched(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: per completion
        return False
    return "prompts" in params and "completions" in params


@attrs.frozen
class Reward:
    """One reward function, its weight in the total, and the name its mean is recorded
    under (``rewards/<name>/mean``)."""

    name: str
    spec: str  # as configured: what a resume resolves again
    weight: float
    fn: Callable[..., Any] = attrs.field(repr=False)
    batched: bool = False

    def score(
        self, examples: Sequence[Mapping[str, Any]], completions: Sequence[str]
    ) -> list[float]:
        """One reward per completion (``examples[i]`` is what completion i answers)."""
        if self.batched:
            prompts = [e.get("prompt", e.get("messages")) for e in examples]
            skip = {"prompt", "completion", "completions", "messages", "reference"}
            columns = {k: [e.get(k) for e in examples] for k in examples[0] if k not in skip}
            values = list(self.fn(prompts=prompts, completions=list(completions), **columns))
        else:
            values = [self.fn(e, c) for e, c in zip(examples, completions, strict=True)]
        if len(values) != len(completions):
            raise ValidationError(
                f"reward {self.spec}", f"{len(values)} rewards for {len(completions)} completions"
            )
        out = []
        for i, value in enumerate(values):
            try:
                out.append(float(value))
            except (TypeError, ValueError):
                raise ValidationError(
                    f"reward {self.spec}[{i}]", f"expected a number, got {value!r:.40}"
                ) from None
        return out


def resolve_rewards(specs: Sequence[str], weights: Sequence[float] = ()) -> tuple[Reward, ...]:
    """The rewards ``specs`` name, weighted (all 1 when ``weights`` is empty)."""
    if not specs:
        raise ConfigError("rewards: expected at least one reward")
    if weights and len(weights) != len(specs):
        raise ConfigError(f"reward_weights: {len(weights)} weights for {len(specs)} rewards")
    rewards = []
    for spec, weight in zip(specs, weights or [1.0] * len(specs), strict=True):
        scorer = resolve_scorer(spec)
        rewards.append(Reward(scorer.name, spec, float(weight), scorer.fn, _is_batched(scorer.fn)))
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        raise ConfigError(f"rewards: two rewards record under one name in {names}")
    return tuple(rewards)
