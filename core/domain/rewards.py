"""Rewards for reinforcement learning: scorers (``galley.core.domain.scorers``) used as rewards, or
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
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from galley.core.domain.scorers import ScoreError, checked_score, resolve_scorer
from galley.core.errors import ConfigError, DataError, GalleyError


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
    needs_reference: bool = False  # a built-in scorer, which compares with the reference

    def score(
        self, examples: Sequence[Mapping[str, Any]], completions: Sequence[str]
    ) -> list[float]:
        """One reward per completion (``examples[i]`` is what completion i answers)."""
        try:
            if self.batched:
                prompts = [e.get("prompt", e.get("messages")) for e in examples]
                skip = {"prompt", "completion", "completions", "messages", "reference"}
                columns = {k: [e.get(k) for e in examples] for k in examples[0] if k not in skip}
                values = self.fn(prompts=prompts, completions=list(completions), **columns)
                if isinstance(values, str | bytes) or not isinstance(values, Iterable):
                    shown = f"{type(values).__name__} {values!r:.40}"
                    message = f"returned {shown}; expected a list of numbers"
                    raise ScoreError(self.spec, message, "reward")
                values = list(values)
            else:
                values = [self.fn(e, c) for e, c in zip(examples, completions, strict=True)]
        except (GalleyError, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as e:  # the function's own failure, named as its
            raise ScoreError(self.spec, f"raised {type(e).__name__}: {e}", "reward") from e
        if len(values) != len(completions):
            message = f"returned {len(values)} rewards for {len(completions)} completions"
            raise ScoreError(self.spec, message, "reward")
        return [checked_score(self.spec, i, value, "reward") for i, value in enumerate(values)]


def resolve_rewards(specs: Sequence[str], weights: Sequence[float] = ()) -> tuple[Reward, ...]:
    """The rewards ``specs`` name, weighted (all 1 when ``weights`` is empty)."""
    if not specs:
        raise ConfigError("rewards: expected at least one reward")
    if weights and len(weights) != len(specs):
        raise ConfigError(f"reward_weights: {len(weights)} weights for {len(specs)} rewards")
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"reward_weights: expected finite numbers, got {list(weights)}")
    if isinstance(specs, str):  # "char_similarity" for ["char_similarity"]: one per letter
        raise ConfigError(f"rewards: expected a list of rewards, got the string {specs!r}")
    rewards = []
    for spec, weight in zip(specs, weights or [1.0] * len(specs), strict=True):
        scorer = resolve_scorer(spec)
        batched = _is_batched(scorer.fn)
        rewards.append(
            Reward(scorer.name, spec, float(weight), scorer.fn, batched, scorer.needs_reference)
        )
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        raise ConfigError(f"rewards: two rewards record under one name in {names}")
    return tuple(rewards)


def check_references(
    rewards: Sequence[Reward],
    tasks: Mapping[str, Sequence[Any]],
    origins: Mapping[str, Sequence[tuple[str, int]]],
) -> None:
    """Refuse, naming the row, a row without a reference answer when a reward compares with
    one (scored against nothing, every answer would get the same reward, silently)."""
    needing = [r.spec for r in rewards if r.needs_reference]
    if not needing:
        return
    for split, split_tasks in tasks.items():
        for task, (source, index) in zip(split_tasks, origins[split], strict=True):
            if task.reference is None:
                raise DataError(
                    source,
                    index,
                    "reference",
                    f"the row has no reference answer, and reward {needing[0]!r} compares "
                    "answers with one: end the row's messages with the expected assistant "
                    "answer, or use rewards that need none (regex:<pattern>, module:function)",
                )
