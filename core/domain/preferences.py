"""Preference pairs: a prompt, a chosen and a rejected answer (TRL's preference format).

Accepted row shapes:
- standard: ``{"prompt": str, "chosen": str, "rejected": str}``; the prompt becomes a user
  message and each answer an assistant message, as galley reads ``prompt``/``completion`` rows;
- conversational: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``;
- implicit prompt: ``{"chosen": ..., "rejected": ...}`` (strings or message lists) whose shared
  beginning is the prompt.
An answer is one assistant message. Each side renders as the prompt plus its answer, with only
the answer's tokens weighted, fitted to ``max_length`` like an SFT row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.domain.chat import Conversation, Message, TrainOn
from galley.core.domain.custom_loss import linearised_data
from galley.core.domain.data_formats import parse_messages
from galley.core.domain.dpo import PairLogprobs, PreferenceObjective, pair_loss, preference_metrics
from galley.core.domain.rendering import Renderer, fit_conversation
from galley.core.domain.types import Datum
from galley.core.errors import DataError, ValidationError

SIDES = ("chosen", "rejected")


@attrs.frozen
class PreferencePair:
    """A prompt and two answers to it, the first preferred."""

    prompt: Conversation
    chosen: Message
    rejected: Message

    def side(self, name: str) -> Conversation:
        """The prompt followed by the ``chosen`` or ``rejected`` answer."""
        answer = self.chosen if name == "chosen" else self.rejected
        return Conversation((*self.prompt.messages, answer))


@attrs.frozen
class RenderedPair:
    """A pair as two Datums whose weights are 1 on the answer's tokens and 0 elsewhere: the
    summed log-probability of an answer is ``sum(logprobs * weights)``."""

    chosen: Datum
    rejected: Datum

    @property
    def datums(self) -> tuple[Datum, Datum]:
        return self.chosen, self.rejected


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@attrs.frozen
class AnswerLogprobs:
    """Summed answer log-probabilities of a list of pairs, one per pair and side."""

    chosen: tuple[float, ...] = attrs.field(converter=_floats)
    rejected: tuple[float, ...] = attrs.field(converter=_floats)

    def __attrs_post_init__(self) -> None:
        if len(self.chosen) != len(self.rejected):
            raise ValidationError(
                "AnswerLogprobs", f"{len(self.chosen)} chosen but {len(self.rejected)} rejected"
            )

    def __len__(self) -> int:
        return len(self.chosen)

    def select(self, indices: Sequence[int]) -> AnswerLogprobs:
        return AnswerLogprobs(
            [self.chosen[i] for i in indices], [self.rejected[i] for i in indices]
        )


def _common_prefix(chosen: Sequence[Any], rejected: Sequence[Any]) -> int:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def _answer(value: Any, side: str, source: str, index: int) -> Message:
    """One assistant message, from a string or a one-message list."""
    if isinstance(value, str):
        return Message("assistant", value)
    messages = parse_messages(value, side, source, index).messages
    if len(messages) != 1 or messages[0].role != "assistant":
        roles = [m.role for m in messages]
        raise DataError(
            source, index, side, f"expected one assistant message as the answer, got {roles}"
        )
    return messages[0]


def _implicit(row: Mapping[str, Any], source: str, index: int) -> PreferencePair:
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        cut = _common_prefix(chosen, rejected)
        while cut and chosen[cut - 1] != " ":  # back up to a word boundary
            cut -= 1
        if not cut:
            raise DataError(
                source, index, "prompt", "missing, and chosen and rejected share no prompt"
            )
        prompt = Conversation([Message("user", chosen[:cut].rstrip())])
        return PreferencePair(
            prompt, Message("assistant", chosen[cut:]), Message("assistant", rejected[cut:])
        )
    chosen_messages = parse_messages(chosen, "chosen", source, index).messages
    rejected_messages = parse_messages(rejected, "rejected", source, index).messages
    cut = _common_prefix(chosen_messages, rejected_messages)
    if not cut:
        raise DataError(
            source, index, "prompt", "missing, and chosen and rejected share no leading message"
        )
    tail = {"chosen": chosen_messages[cut:], "rejected": rejected_messages[cut:]}
    for side, messages in tail.items():
        if len(messages) != 1 or messages[0].role != "assistant":
            raise DataError(
                source,
                index,
                side,
                "expected the messages after the shared prompt to be one assistant message, "
                f"got {[m.role for m in messages]}",
            )
    return PreferencePair(
        Conversation(chosen_messages[:cut]), tail["chosen"][0], tail["rejected"][0]
    )


def row_to_pair(row: Any, *, source: str, index: int) -> PreferencePair:
    """The preference pair a row holds, or a :class:`DataError` naming source, row and field."""
    if not isinstance(row, Mapping):
        raise DataError(source, index, "<row>", f"expected an object, got {type(row).__name__}")
    for side in SIDES:
        if side not in row:
            raise DataError(
                source,
                index,
                side,
                f"missing; a preference row has prompt/chosen/rejected, got {sorted(row)}",
            )
    if "prompt" not in row:
        return _implicit(row, source, index)
    prompt = row["prompt"]
    if isinstance(prompt, str):
        conversation = Conversation([Message("user", prompt)])
    else:
        conversation = parse_messages(prompt, "prompt", source, index)
    return PreferencePair(
        conversation,
        _answer(row["chosen"], "chosen", source, index),
        _answer(row["rejected"], "rejected", source, index),
    )


def render_pair(
    renderer: Renderer, pair: PreferencePair, max_length: int, truncation: str
) -> RenderedPair:
    """Both sides rendered and fitted as SFT fits a row (raises ``DoesNotFitError`` when
    either cannot fit: a pair is kept whole or not at all)."""
    chosen, rejected = (
        fit_conversation(
            renderer, pair.side(side), TrainOn.LAST_ASSISTANT_MESSAGE, max_length, truncation
        )
        for side in SIDES
    )
    return RenderedPair(chosen, rejected)


def answer_logprobs(datum: Datum, logprobs: npt.NDArray[Any]) -> float:
    """The summed log-probability of the datum's answer (its weighted tokens)."""
    weights = datum.loss_fn_inputs["weights"].data
    if logprobs.shape != weights.shape:
        raise ValidationError(
            "logprobs", f"shape {logprobs.shape} for a datum of {len(weights)} tokens"
        )
    return float((weights * logprobs).sum(dtype=np.float64))


def pair_datums(pairs: Sequence[RenderedPair]) -> list[Datum]:
    """Each pair's chosen then rejected datum, pair after pair: one request for both sides."""
    return [datum for pair in pairs for datum in pair.datums]


def summed_answers(
    pairs: Sequence[RenderedPair], logprobs: Sequence[npt.NDArray[Any]]
) -> AnswerLogprobs:
    """Answer sums from the per-token log-probabilities of ``pair_datums(pairs)``."""
    data = pair_datums(pairs)
    if len(logprobs) != len(data):
        raise ValidationError("logprobs", f"{len(logprobs)} sequences for {len(pairs)} pairs")
    sums = [answer_logprobs(d, lp) for d, lp in zip(data, logprobs, strict=True)]
    return AnswerLogprobs(sums[0::2], sums[1::2])


def answer_tokens(datum: Datum) -> float:
    return float(datum.loss_fn_inputs["weights"].data.sum())


def pair_logprobs(
    pairs: Sequence[RenderedPair], policy: AnswerLogprobs, reference: AnswerLogprobs
) -> PairLogprobs:
    """What the preference loss needs of ``pairs``: policy and reference sums, answer lengths."""
    if not len(pairs) == len(policy) == len(reference):
        raise ValidationError(
            "pair_logprobs",
            f"{len(pairs)} pairs, {len(policy)} policy and {len(reference)} reference sums",
        )
    return PairLogprobs(
        policy.chosen,
        policy.rejected,
        reference.chosen,
        reference.rejected,
        [answer_tokens(p.chosen) for p in pairs],
        [answer_tokens(p.rejected) for p in pairs],
    )


def preference_gradient(
    pairs: Sequence[RenderedPair],
    logprobs: Sequence[npt.NDArray[Any]],
    reference: AnswerLogprobs,
    objective: PreferenceObjective,
) -> tuple[list[Datum], dict[str, float]]:
    """The cross-entropy data whose gradient is the preference loss's over ``pairs`` (from the
    per-token ``logprobs`` of ``pair_datums(pairs)``), and TRL's metrics of the batch. A token's
    gradient is its answer's: d loss / d logprob is the same for every token of an answer."""
    data = pair_datums(pairs)
    scored = pair_logprobs(pairs, summed_answers(pairs, logprobs), reference)
    _, d_chosen, d_rejected = pair_loss(scored, objective)
    per_answer = [g for both in zip(d_chosen, d_rejected, strict=True) for g in both]
    grads = [g * d.loss_fn_inputs["weights"].data for g, d in zip(per_answer, data, strict=True)]
    return linearised_data(data, grads), preference_metrics(scored, objective)
