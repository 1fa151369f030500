"""Renderers turn a conversation into tokens plus per-token loss weights.

The weights say which tokens are trained on (the :class:`TrainOn` choice); ``to_datum`` then
shifts them into a next-token :class:`Datum`, truncating to a maximum length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import attrs
import numpy as np
import numpy.typing as npt

from galley.core.chat import Conversation, TrainOn
from galley.core.errors import ValidationError
from galley.core.model_input import ModelInput
from galley.core.tokenizer import Tokenizer
from galley.core.types import Datum


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


def to_datum(example: RenderedExample, max_length: int, *, truncate: bool = True) -> Datum:
    """Shift a rendered example into a next-token Datum of at most ``max_length`` input tokens.

    Raises when the example is longer than allowed and ``truncate`` is off, or when it has no
    trained token left after truncation (such a row would silently train on nothing).
    """
    tokens = example.model_input.to_ints()
    weights = example.weights
    if len(tokens) - 1 > max_length:
        if not truncate:
            raise ValidationError(
                "max_length",
                f"example has {len(tokens)} tokens, more than max_length + 1 = {max_length + 1} "
                "(raise max_length or enable truncation)",
            )
        tokens, weights = tokens[: max_length + 1], weights[: max_length + 1]
    if len(tokens) < 2 or not weights[1:].any():
        raise ValidationError("weights", "example has no trained token (after truncation)")
    return Datum.from_tokens(tokens, weights)
