"""Reinforcement learning from rewards, GRPO-style: the domain arithmetic.

A step samples ``group_size`` completions of each prompt from the current weights, scores
them, and centres each reward on its group's mean (optionally divided by the group's standard
deviation): the advantage. A group whose rewards are all equal teaches nothing and is dropped.
Each kept completion becomes a Datum whose sampled tokens carry the sampler's log-probabilities
and the advantage (its prompt tokens carry zeros, so they get no gradient), for the
``importance_sampling``, ``ppo`` or ``cispo`` loss.

Those losses are sums over tokens, so the advantages carry the normalisation:

- ``tokens`` (TRL's ``dapo``, its default): each token's term is divided by the number of
  sampled tokens in the whole batch;
- ``sequence`` (TRL's ``grpo``): by the completion's own length times the number of
  completions, so each completion weighs the same whatever its length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.domain.chat import Conversation
from galley.core.domain.data_formats import row_to_conversation
from galley.core.domain.model_input import ModelInput
from galley.core.domain.types import Datum
from galley.core.errors import DataError, ValidationError


class PolicyLoss(StrEnum):
    """The policy-gradient losses (Tinker's names)."""

    IMPORTANCE_SAMPLING = "importance_sampling"
    PPO = "ppo"
    CISPO = "cispo"


class Normalisation(StrEnum):
    TOKENS = "tokens"
    SEQUENCE = "sequence"


@attrs.frozen
class Task:
    """A prompt to answer, its reference answer (when the row has one) and the dataset row
    it came from, which rewards read."""

    prompt: Conversation
    reference: str | None
    row: Mapping[str, Any] = attrs.field(eq=False, repr=False)

    def example(self) -> dict[str, Any]:
        """What a reward or scorer is given: the row, with the prompt's ``messages`` and the
        ``reference`` answer (as galley's scorers read them)."""
        messages = [{"role": m.role, "content": m.content} for m in self.prompt.messages]
        return {**self.row, "messages": messages, "reference": self.reference}


def row_to_task(row: Any, *, source: str, index: int) -> Task:
    """A row as a prompt and, when it has one, its reference answer: a chat whose last
    message is the assistant's, any pair format galley reads for SFT, or a prompt alone
    (``{"prompt": str | messages}``)."""
    if isinstance(row, Mapping) and "prompt" in row and not {"completion", "messages"} & set(row):
        prompt = row["prompt"]
        if isinstance(prompt, str):
            return Task(Conversation.of(("user", prompt)), None, row)
        conversation = row_to_conversation({"messages": prompt}, source=source, index=index)
        return Task(conversation, None, row)
    conversation = row_to_conversation(row, source=source, index=index)
    messages = conversation.messages
    if messages[-1].role != "assistant":
        return Task(conversation, None, row)
    if len(messages) == 1:
        raise DataError(source, index, "messages", "has an answer but no prompt")
    return Task(Conversation(messages[:-1]), messages[-1].content, row)


def group_advantages(
    rewards: npt.NDArray[np.float64], scale_by_std: bool
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Per completion (``rewards`` is groups x group size): reward minus its group's mean,
    divided by the group's standard deviation when ``scale_by_std``; and which groups are
    kept (those whose rewards are not all equal)."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValidationError(
            "rewards", f"expected groups x group size (at least 2), got shape {rewards.shape}"
        )
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    kept = std[:, 0] > 1e-9
    if scale_by_std:
        centred = centred / np.where(std > 1e-9, std, 1.0)
    return centred, kept


def rollout_datum(
    prompt_tokens: Sequence[int],
    tokens: Sequence[int],
    logprobs: Sequence[float],
    advantage: float,
) -> Datum:
    """The datum that trains on one sampled completion: input = prompt + completion minus its
    last token; targets shifted by one; the completion's targets carry the sampler's
    log-probabilities and ``advantage``, the prompt's zeros."""
    if not tokens:
        raise ValidationError("tokens", "a completion with no tokens has nothing to train on")
    if len(logprobs) != len(tokens):
        raise ValidationError(
            "logprobs", f"{len(logprobs)} logprobs for {len(tokens)} sampled tokens"
        )
    if not prompt_tokens:
        raise ValidationError("prompt_tokens", "expected at least one prompt token")
    full = [*prompt_tokens, *tokens]
    n = len(full) - 1
    sampled = np.zeros(n, np.float32)
    sampled[-len(tokens) :] = logprobs
    advantages = np.zeros(n, np.float32)
    advantages[-len(tokens) :] = advantage
    return Datum(
        ModelInput.from_ints(full[:-1]),
        {
            "target_tokens": np.asarray(full[1:], np.int64),
            "logprobs": sampled,
            "advantages": advantages,
        },
    )


def normalised_advantages(
    advantages: Sequence[float], lengths: Sequence[int], normalisation: str
) -> list[float]:
    """Each completion's advantage scaled so that the token-summed loss is the mean the
    ``normalisation`` names (see the module docstring)."""
    mode = Normalisation(normalisation)
    if len(advantages) != len(lengths):
        raise ValidationError("advantages", f"{len(advantages)} advantages, {len(lengths)} lengths")
    if mode is Normalisation.TOKENS:
        total = sum(lengths)
        return [a / total for a in advantages]
    return [a / (n * len(lengths)) for a, n in zip(advantages, lengths, strict=True)]


def sampled_token_kl(
    sampler_logprobs: Sequence[npt.NDArray[Any]], learner_logprobs: Sequence[npt.NDArray[Any]]
) -> float:
    """KL(sampler || learner) per sampled token, estimated as the mean of
    ``exp(d) - d - 1`` with ``d = learner - sampler`` (non-negative, ~0 on-policy)."""
    d = np.concatenate(
        [
            np.asarray(lp, np.float64) - np.asarray(sp, np.float64)
            for sp, lp in zip(sampler_logprobs, learner_logprobs, strict=True)
        ]
    )
    return float(np.mean(np.expm1(d) - d)) if d.size else 0.0
