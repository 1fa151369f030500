"""Normalise dataset rows of the common fine-tuning formats into conversations.

Accepted row shapes (first match wins):
- ``{"messages": [{"role": ..., "content": ...}, ...]}`` (chat)
- ``{"prompt": ..., "completion": ...}``
- ``{"instruction": ..., "response": ...}`` (optional ``input`` appended to the instruction)
- ``{"input": ..., "output": ...}``
An optional ``system`` string becomes a leading system message for the pair formats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from galley.core.domain.chat import ROLES, Conversation, Message
from galley.core.errors import DataError

PAIR_FORMATS: tuple[tuple[str, str], ...] = (
    ("prompt", "completion"),
    ("instruction", "response"),
    ("input", "output"),
)


def _string(row: Mapping[str, Any], key: str, source: str, index: int) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise DataError(source, index, key, f"expected a string, got {type(value).__name__}")
    return value


def parse_messages(raw: Any, field: str, source: str, index: int) -> Conversation:
    """A list of ``{"role", "content"}`` objects (row field ``field``) as a conversation."""
    if not isinstance(raw, list | tuple):
        raise DataError(source, index, field, f"expected a list, got {type(raw).__name__}")
    if not raw:
        raise DataError(source, index, field, "empty conversation; expected at least one message")
    messages = []
    for j, m in enumerate(raw):
        where = f"{field}[{j}]"
        if not isinstance(m, Mapping):
            raise DataError(source, index, where, f"expected an object, got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise DataError(source, index, f"{where}.{key}", "missing")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(
                source,
                index,
                f"{where}.role",
                f"unknown role {role!r}; expected one of {', '.join(ROLES)}",
            )
        if not isinstance(content, str):
            raise DataError(
                source,
                index,
                f"{where}.content",
                f"expected a string, got {type(content).__name__}",
            )
        messages.append(Message(role, content))
    return Conversation(messages)


def row_to_conversation(row: Any, *, source: str, index: int) -> Conversation:
    """The conversation a row holds, or a :class:`DataError` naming source, row and field."""
    if not isinstance(row, Mapping):
        raise DataError(source, index, "<row>", f"expected an object, got {type(row).__name__}")
    if "messages" in row:
        return parse_messages(row["messages"], "messages", source, index)
    for prompt_key, answer_key in PAIR_FORMATS:
        if prompt_key in row or answer_key in row:
            if answer_key not in row or prompt_key not in row:
                missing = answer_key if answer_key not in row else prompt_key
                raise DataError(
                    source,
                    index,
                    missing,
                    f"missing (row has {prompt_key!r}/{answer_key!r} format)",
                )
            prompt = _string(row, prompt_key, source, index)
            if prompt_key == "instruction" and row.get("input"):
                prompt = f"{prompt}\n\n{_string(row, 'input', source, index)}"
            messages = []
            if row.get("system"):
                messages.append(Message("system", _string(row, "system", source, index)))
            messages += [
                Message("user", prompt),
                Message("assistant", _string(row, answer_key, source, index)),
            ]
            return Conversation(messages)
    formats = ", ".join(["messages", *(f"{p}/{a}" for p, a in PAIR_FORMATS)])
    raise DataError(
        source, index, "<row>", f"no known format; expected fields {formats}, got {sorted(row)}"
    )
