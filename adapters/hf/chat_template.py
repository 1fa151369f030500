"""Render conversations with the model's own chat template (``tokenizer_config.json``).

The template runs in jinja2's immutable sandbox, with the same settings and helpers
``transformers`` uses. Loss masks come from character spans: the text of message i is what
rendering messages[:i+1] adds to rendering messages[:i] (for an assistant message, after the
generation prompt), and a token is trained on when it starts inside a trained span. A
template that folds a message into the next (Gemma's system message, which opens the first
user turn) gives the first an empty span: its text trains with the message it joins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

import attrs
import numpy as np
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from galley.core.domain.chat import Conversation, Message, TrainOn
from galley.core.domain.model_input import ModelInput
from galley.core.domain.rendering import RenderedExample
from galley.core.errors import ValidationError

Encoder = Callable[[str], tuple[list[int], list[tuple[int, int]]]]


def _raise(message: str) -> NoReturn:
    raise ValidationError("chat_template", message)


def compile_template(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


@attrs.frozen
class ChatTemplateRenderer:
    template_source: str
    encode_with_offsets: Encoder = attrs.field(repr=False)
    special_tokens: dict[str, str] = attrs.field(factory=dict)
    stop_sequences: tuple[str, ...] = ()
    _template: Any = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_template", compile_template(self.template_source))

    def text(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        rendered: str = self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )
        return rendered

    def _before(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        """The text of a conversation's first ``messages``; for none, what the template gives
        for no messages, or nothing where it needs one (Gemma's reads ``messages[0]``)."""
        if messages:
            return self.text(messages, add_generation_prompt)
        try:
            return self.text(messages, add_generation_prompt)
        except TemplateError:
            return ""

    def _spans(
        self, conversation: Conversation, train_on: TrainOn, full: str
    ) -> list[tuple[int, int]]:
        messages = conversation.messages
        last = conversation.last_assistant_index
        spans = []
        for i, m in enumerate(messages):
            if train_on is TrainOn.ALL_ASSISTANT_MESSAGES and m.role != "assistant":
                continue
            if train_on is TrainOn.LAST_ASSISTANT_MESSAGE and i != last:
                continue
            start = len(self._before(messages[:i], add_generation_prompt=m.role == "assistant"))
            end = len(self.text(messages[: i + 1]))
            if not full.startswith(self.text(messages[: i + 1])):
                raise ValidationError(
                    "chat_template",
                    "rendering a conversation's prefix does not give a prefix of its text; "
                    "loss masks cannot be derived for this template",
                )
            spans.append((start, end))
        return spans

    def render(self, conversation: Conversation, train_on: TrainOn) -> RenderedExample:
        full = self.text(conversation.messages)
        ids, offsets = self.encode_with_offsets(full)
        if train_on is TrainOn.ALL_TOKENS:
            weights = np.ones(len(ids), np.float32)
        else:
            spans = self._spans(conversation, train_on, full)
            weights = np.asarray(
                [1.0 if any(a <= start < b for a, b in spans) else 0.0 for start, _ in offsets],
                np.float32,
            )
        return RenderedExample(ModelInput.from_ints(ids), weights)

    def generation_prompt(self, conversation: Conversation) -> ModelInput:
        ids, _ = self.encode_with_offsets(
            self.text(conversation.messages, add_generation_prompt=True)
        )
        return ModelInput.from_ints(ids)
