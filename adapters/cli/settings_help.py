"""``galley run WORKFLOW --help``: every setting of the workflow, by section, with its type,
its default (the workflow's own) and one line of meaning, read from the config classes
themselves: a section's docstring, and the comment on or above each field."""

from __future__ import annotations

import inspect
import re
import textwrap
from typing import Any

import attrs

from galley.core.configs import leaf_fields, section_types

FIELD = re.compile(r"^    (\w+)\s*:")


# The CLI builds its parser on every call: each class's source is read once a process.
_COMMENTS: dict[type[Any], dict[str, str]] = {}
_HELP: dict[type[Any], str] = {}


def field_comments(cls: type[Any]) -> dict[str, str]:
    """Each field's comment: the comment lines right above it and the one at its line's end
    (base classes first, so a subclass's own comment wins)."""
    if cls not in _COMMENTS:
        _COMMENTS[cls] = _read_comments(cls)
    return _COMMENTS[cls]


def _read_comments(cls: type[Any]) -> dict[str, str]:
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not attrs.has(klass):
            continue
        pending: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped.lstrip("# "))
                continue
            match = FIELD.match(line)
            if match:
                trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                text = " ".join([*pending, trailing]).strip()
                if text:
                    comments[match.group(1)] = text
            pending = []
    return comments


def _type(attribute: attrs.Attribute[Any]) -> str:
    kind = attribute.type
    return kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")


def settings_help(config_type: type[Any]) -> str:
    """The settings of ``config_type``, section by section, as text for ``--help``."""
    if config_type not in _HELP:
        _HELP[config_type] = _settings_help(config_type)
    return _HELP[config_type]


def _settings_help(config_type: type[Any], width: int = 88) -> str:
    defaults = config_type()
    sections = section_types(config_type)
    comments = {name: field_comments(kind) for name, kind in sections.items()}
    own = field_comments(config_type)
    lines = [
        "settings (--set NAME=VALUE, or section.NAME; TOML: [WORKFLOW] or [WORKFLOW.section]):"
    ]
    current = None
    for dotted, attribute in leaf_fields(config_type):
        section, _, name = dotted.rpartition(".")
        if section != current:
            current = section
            kind = sections.get(section)
            own_doc = kind.__dict__.get("__doc__") if kind else None  # not the base's
            doc = inspect.cleandoc(own_doc).split("\n\n")[0].replace("\n", " ") if own_doc else ""
            title = f"[{section}]" if section else "[own settings]"
            lines += ["", f"{title} {doc}".rstrip()]
        value = getattr(getattr(defaults, section), name) if section else getattr(defaults, name)
        meaning = (comments.get(section, {}) if section else own).get(name, "")
        head = f"  {name} ({_type(attribute)}, default {value!r})"
        lines.append(head)
        if meaning:
            indent = " " * 6
            lines += textwrap.wrap(meaning, width, initial_indent=indent, subsequent_indent=indent)
    return "\n".join(lines)
