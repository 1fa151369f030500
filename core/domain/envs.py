"""Environments: what an RL episode talks to, turn by turn (tinker-cookbook's ``Env``).

An episode starts from the environment's first observation (a conversation, which the run's
chat format renders, or raw tokens); the model answers; the environment reads the answer
(its sampled tokens and their text) and returns a reward, whether the episode is done, the
next observation and metrics of its own. A group builder makes the ``group_size``
environments of one dataset row (cookbook's ``EnvGroupBuilder``): their episodes are the
group whose returns (each the sum of its turns' rewards) give the advantages. Every turn's
sampled tokens train with their episode's advantage; observations (prompts, feedback) never
train. Environments are synchronous and run in the learner's process."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from galley.core.domain.chat import Conversation
from galley.core.domain.model_input import ModelInput
from galley.core.domain.types import SampledSequence
from galley.core.errors import ValidationError


@attrs.frozen
class Observation:
    """What the model answers next: a conversation (rendered with the run's chat format) or
    tokens as they are, and strings that end this turn besides the format's own."""

    conversation: Conversation | None = None
    tokens: ModelInput | None = None
    stop: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if (self.conversation is None) == (self.tokens is None):
            raise ValidationError("Observation", "give exactly one of conversation and tokens")


@attrs.frozen
class Action:
    """The model's answer: the tokens it sampled and their text (stop strings cut off)."""

    tokens: tuple[int, ...]
    text: str


@attrs.frozen
class Transition:
    """What a step of the environment returns: the answer's reward, whether the episode is
    over, the next observation (required unless it is) and metrics to record."""

    reward: float
    done: bool
    observation: Observation | None = None
    metrics: Mapping[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.done and self.observation is None:
            raise ValidationError("Transition.observation", "an episode that goes on needs one")


class Env(Protocol):
    def initial_observation(self) -> Observation: ...

    def step(self, action: Action) -> Transition: ...


# (dataset row as rewards see it, group size, seed) -> the group's environments.
EnvGroupBuilder = Callable[[Mapping[str, Any], int, int], Sequence[Env]]


@attrs.frozen
class Turn:
    """One answer of an episode: the tokens the model was shown, what it sampled, and the
    reward the environment gave it."""

    prompt: ModelInput
    sequence: SampledSequence
    reward: float


@attrs.frozen
class Episode:
    """An environment's turns, whether it ended them (not the turn limit), and its metrics
    summed over turns."""

    turns: tuple[Turn, ...]
    finished: bool
    metrics: Mapping[str, float] = attrs.field(factory=dict)

    @property
    def total(self) -> float:
        """The episode's return: every turn's reward."""
        return float(sum(t.reward for t in self.turns))


def build_group(
    builder: EnvGroupBuilder, example: Mapping[str, Any], size: int, seed: int
) -> list[Env]:
    """The builder's environments for one row, refused unless there are ``size`` of them."""
    envs = list(builder(example, size, seed))
    if len(envs) != size:
        raise ValidationError(
            "env", f"the group builder made {len(envs)} environments, expected {size}"
        )
    return envs
