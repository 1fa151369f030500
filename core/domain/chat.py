"""Conversations: the unit of chat fine-tuning data."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import attrs

from galley.core.checks import one_of
from galley.core.errors import ValidationError

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


def _content(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise ValidationError("Message.content", f"expected a string, got {type(value).__name__}")


@attrs.frozen
class Message:
    role: str = attrs.field(validator=one_of(ROLES))
    content: str = attrs.field(validator=_content)


def _messages(value: Iterable[Message]) -> tuple[Message, ...]:
    return tuple(value)


@attrs.frozen
class Conversation:
    """A non-empty list of messages."""

    messages: tuple[Message, ...] = attrs.field(converter=_messages)

    def __attrs_post_init__(self) -> None:
        if not self.messages:
            raise ValidationError("Conversation.messages", "expected at least one message")
        for i, m in enumerate(self.messages):
            if not isinstance(m, Message):
                raise ValidationError(
                    f"Conversation.messages[{i}]", f"expected a Message, got {type(m).__name__}"
                )

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Conversation:
        """``Conversation.of(("user", "hi"), ("assistant", "hello"))``."""
        return cls(Message(role, content) for role, content in pairs)

    @property
    def last_assistant_index(self) -> int | None:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "assistant":
                return i
        return None


class TrainOn(StrEnum):
    """Which tokens of a rendered conversation carry loss weight."""

    LAST_ASSISTANT_MESSAGE = "last_assistant_message"
    ALL_ASSISTANT_MESSAGES = "all_assistant_messages"
    ALL_MESSAGES = "all_messages"
    ALL_TOKENS = "all_tokens"
