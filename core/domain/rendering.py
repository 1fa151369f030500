"""Renderers turn a conversation into tokens plus per-token loss weights.

The weights say which tokens are trained on (the :class:`TrainOn` choice); ``to_datum`` then
shifts them into a next-token :class:`Datum`, fitting it to a maximum length
(``Truncation``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Protocol, runtime_checkable

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.domain.chat import Conversation, TrainOn
from galley.core.domain.model_input import ModelInput
from galley.core.domain.tokenizer import Tokenizer
from galley.core.domain.types import Datum
from galley.core.errors import ValidationError


@attrs.frozen(eq=False)
class RenderedExample:
    """Tokens of a rendered conversation and one loss weight per token (0 or 1)."""

    model_input: ModelInput
    weights: npt.NDArray[np.float32]

    def __attrs_post_init__(self) -> None:
        if self.weights.shape != (self.model_input.length,):
            raise ValidationError(
                "RenderedExample.weights",
                f"shape {self.weights.shape} does not match {self.model_input.length} tokens",
            )


@runtime_checkable
class Renderer(Protocol):
    """Formats conversations for one model family."""

    def render(self, conversation: Conversation, train_on: TrainOn) -> RenderedExample:
        """Tokens of the whole conversation, with weights set by ``train_on``."""
        ...

    def generation_prompt(self, conversation: Conversation) -> ModelInput:
        """Tokens that prompt the model to write the next assistant message."""
        ...

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        """Strings that end an assistant message when sampling (EOS always does)."""
        ...


def _trained(train_on: TrainOn, index: int, role: str, last_assistant: int | None) -> bool:
    if train_on is TrainOn.ALL_MESSAGES or train_on is TrainOn.ALL_TOKENS:
        return True
    if train_on is TrainOn.ALL_ASSISTANT_MESSAGES:
        return role == "assistant"
    return index == last_assistant


@attrs.frozen
class RoleColonRenderer:
    """A plain, model-agnostic format::

        User: What is 2+2?

        Assistant: 4<eos>

    Headers (``User:``) are never trained on except with ``all_tokens``; an assistant message
    ends with EOS (trained, so the model learns to stop), other messages with a blank line.
    """

    tokenizer: Tokenizer

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return ("\n\nUser:",)

    def _header(self, role: str) -> list[int]:
        return self.tokenizer.encode(f"{role.capitalize()}:")

    def render(self, conversation: Conversation, train_on: TrainOn) -> RenderedExample:
        tok = self.tokenizer
        tokens: list[int] = []
        weights: list[float] = []
        if tok.bos_token_id is not None:
            tokens.append(tok.bos_token_id)
            weights.append(1.0 if train_on is TrainOn.ALL_TOKENS else 0.0)
        last = conversation.last_assistant_index
        for i, message in enumerate(conversation.messages):
            header = self._header(message.role)
            body = tok.encode(f" {message.content}")
            body += [tok.eos_token_id] if message.role == "assistant" else tok.encode("\n\n")
            trained = _trained(train_on, i, message.role, last)
            tokens += header + body
            weights += [1.0 if train_on is TrainOn.ALL_TOKENS else 0.0] * len(header)
            weights += [1.0 if trained else 0.0] * len(body)
        return RenderedExample(ModelInput.from_ints(tokens), np.asarray(weights, dtype=np.float32))

    def generation_prompt(self, conversation: Conversation) -> ModelInput:
        tok = self.tokenizer
        tokens = [tok.bos_token_id] if tok.bos_token_id is not None else []
        for message in conversation.messages:
            tokens += self._header(message.role) + tok.encode(f" {message.content}")
            tokens += [tok.eos_token_id] if message.role == "assistant" else tok.encode("\n\n")
        return ModelInput.from_ints(tokens + self._header("assistant"))


RendererFactory = Callable[[Tokenizer], Renderer]


@runtime_checkable
class HasChatTemplate(Protocol):
    """A tokenizer that carries its model's chat template and can render with it."""

    def chat_renderer(self) -> Renderer: ...


def chat_template_renderer(tokenizer: Tokenizer) -> Renderer:
    """The model's own chat template (from its tokenizer), for tokenizers that carry one."""
    if not isinstance(tokenizer, HasChatTemplate):
        raise ValidationError(
            "renderer",
            f"'chat_template' needs a tokenizer with a chat template; "
            f"{type(tokenizer).__name__} has none",
        )
    return tokenizer.chat_renderer()


RENDERERS: Mapping[str, RendererFactory] = {
    "role_colon": RoleColonRenderer,
    "chat_template": chat_template_renderer,
}


def make_renderer(name: str, tokenizer: Tokenizer) -> Renderer:
    try:
        factory = RENDERERS[name]
    except KeyError:
        raise ValidationError(
            "renderer", f"unknown renderer {name!r}; expected one of {', '.join(RENDERERS)}"
        ) from None
    return factory(tokenizer)


class Truncation(StrEnum):
    """What to do with an example longer than ``max_length`` (TRL's ``truncation_mode``)."""

    KEEP_END = "keep_end"  # drop the oldest prompt: leading messages, then leading tokens
    KEEP_START = "keep_start"  # drop the end
    ERROR = "error"  # refuse it


class DoesNotFitError(ValidationError):
    """An example that no truncation can fit without cutting what it trains on: the run
    skips it (and counts it) instead of stopping."""


def to_datum(
    example: RenderedExample, max_length: int, truncation: str = Truncation.KEEP_END
) -> Datum:
    """Shift a rendered example into a next-token Datum of at most ``max_length`` input tokens.

    ``keep_end`` drops leading tokens, never a trained one (one token stays before the first
    trained token, to predict it from); ``keep_start`` drops the end. Raises ValidationError
    for a long example under ``error``, and DoesNotFitError when what would be left trains on
    nothing (``keep_end``: the trained tokens alone are too long; ``keep_start``: none are in
    the kept start)."""
    mode = Truncation(truncation)
    tokens = example.model_input.to_ints()
    weights = example.weights
    excess = len(tokens) - 1 - max_length
    if excess > 0:
        if mode is Truncation.ERROR:
            raise ValidationError(
                "max_length",
                f"example has {len(tokens)} tokens, more than max_length + 1 = {max_length + 1} "
                "(raise max_length, or truncate: truncation='keep_end' or 'keep_start')",
            )
        if mode is Truncation.KEEP_START:
            tokens, weights = tokens[: max_length + 1], weights[: max_length + 1]
        else:
            trained = np.flatnonzero(weights[1:])
            first = int(trained[0]) + 1 if trained.size else len(tokens)
            if excess > first - 1:
                raise DoesNotFitError(
                    "max_length",
                    f"example trains on {len(tokens) - first} tokens after {first} of prompt; "
                    f"they do not fit in max_length {max_length} even with the prompt cut to "
                    "one token",
                )
            tokens, weights = tokens[excess:], weights[excess:]
    if len(tokens) < 2 or not weights[1:].any():
        raise DoesNotFitError("weights", "example has no trained token (after truncation)")
    return Datum.from_tokens(tokens, weights)


def fit_conversation(
    renderer: Renderer,
    conversation: Conversation,
    train_on: TrainOn,
    max_length: int,
    truncation: str = Truncation.KEEP_END,
) -> Datum:
    """Render ``conversation`` as a Datum of at most ``max_length`` tokens. Under ``keep_end``
    a multi-turn chat first loses whole leading messages that are not trained on (a leading
    system message is kept), re-rendered each time; then ``to_datum`` cuts tokens."""
    example = renderer.render(conversation, train_on)
    if Truncation(truncation) is Truncation.KEEP_END:
        while example.model_input.length - 1 > max_length:
            shorter = _without_oldest_prompt_message(conversation, train_on)
            if shorter is None:
                break
            conversation, example = shorter, renderer.render(shorter, train_on)
    return to_datum(example, max_length, truncation)


def _without_oldest_prompt_message(
    conversation: Conversation, train_on: TrainOn
) -> Conversation | None:
    """The conversation without its oldest message that is neither a leading system message,
    nor trained on, nor the one right before the first trained message (whose end is the
    prompt's most useful part: ``to_datum`` cuts into it token by token instead)."""
    messages, last = conversation.messages, conversation.last_assistant_index
    if train_on is TrainOn.ALL_TOKENS:
        return None
    first_trained = next(
        (i for i, m in enumerate(messages) if _trained(train_on, i, m.role, last)), None
    )
    oldest = 1 if messages[0].role == "system" else 0
    if first_trained is None or oldest >= first_trained - 1:
        return None
    return Conversation(messages[:oldest] + messages[oldest + 1 :])
